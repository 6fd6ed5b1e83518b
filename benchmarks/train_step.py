"""Training step: fromscratch's step against the plain loop of torchvision's detection references, on the
same network (same weights at the start), the same data, batch and threads, alternating A B A B.

Reference (``ref``): what torchvision's references/detection/train.py does around a detection model: a
DataLoader (same workers) decoding the image to float and the polygons to masks at native size with a
random flip; the model's GeneralizedRCNNTransform resizes image and masks inside the step (multi-scale
as a tuple of sizes); sum of losses, ``.item()`` for the finite check, zero_grad, backward, SGD step.
Ours (``ours``, ``ours_bf16``): fromscratch's trainer pieces as `fromscratch train` runs them: the run set
up by engine/trainer.setup, the loader of data/loader.py (workers decode, resize and flip uint8 images
and masks, the model skips the resize), engine/trainer._step (fp32, or bf16 autocast = train.amp=bf16).

Each variant runs blocks of --block steps in turn for --rounds rounds (the first round is warm-up; the
first step of every block, which waits for fresh workers, is not timed). Prints images/s, per-stage
seconds (data wait, forward, backward, optimizer), peak resident memory, and the ratio to ``ref``.
Usage: python benchmarks/train_step.py [--config configs/models/cpu.yaml] [--rounds 4] [--block 6]
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, machine, median, table, target, workdir  # noqa: E402

from fromscratch.config import has_masks, load_config  # noqa: E402
from fromscratch.data.loader import load_image, train_loader  # noqa: E402
from fromscratch.data.transforms import TrainTransform  # noqa: E402
from fromscratch.engine.trainer import _step, setup  # noqa: E402

DEFAULT_OVERRIDES = ["data.train=data/fashion-scenes/train.json", "data.val=null", "data.train_scales=[96,128]",
                     "data.scale_sampling=range", "data.test_scale=112", "data.max_size=187",
                     "data.num_workers=2", "train.base_lr=0.02", "train.warmup_iters=10", "train.schedule=1x"]


class ReferenceSet(torch.utils.data.Dataset):
    """torchvision references' CocoDetection + ConvertCocoPolysToMask + RandomHorizontalFlip + ToDtype."""

    def __init__(self, records: list, with_masks: bool):
        self.records, self.with_masks = records, with_masks

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        r = self.records[i]
        image = torch.from_numpy(load_image(r.file_name)).permute(2, 0, 1).float().div(255)
        keep = ~r.iscrowd
        t = {"boxes": torch.from_numpy(r.boxes[keep]).float().reshape(-1, 4),
             "labels": torch.from_numpy(r.labels[keep]).long()}
        if self.with_masks:
            t["masks"] = torch.from_numpy(r.masks()[keep])
        if torch.rand(1).item() < 0.5:
            image = image.flip(-1)
            w = image.shape[-1]
            t["boxes"][:, [0, 2]] = w - t["boxes"][:, [2, 0]]
            if "masks" in t:
                t["masks"] = t["masks"].flip(-1)
        return image, t


def reference_loader(records: list, with_masks: bool, batch: int, workers: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ReferenceSet(records, with_masks), batch_size=batch, shuffle=True,
                                       num_workers=workers, collate_fn=lambda b: tuple(zip(*b)), generator=gen,
                                       drop_last=True)


class Variant:
    def __init__(self, name: str):
        self.name, self.it, self.times, self.images = name, 0, [], 0
        self.stages = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self.timed_steps, self.peak = 0, 0.0


def reference_step(model, opt, images, targets, stages: dict) -> None:
    tick = time.perf_counter()
    images = list(im for im in images)
    targets = [{k: v for k, v in t.items()} for t in targets]
    loss_dict = model(images, targets)
    losses = sum(loss for loss in loss_dict.values())
    loss_value = losses.item()
    if not math.isfinite(loss_value):
        raise SystemExit(f"reference loop: loss is {loss_value}")
    now = time.perf_counter(); stages["forward"] += now - tick; tick = now  # noqa: E702
    opt.zero_grad()
    losses.backward()
    now = time.perf_counter(); stages["backward"] += now - tick; tick = now  # noqa: E702
    opt.step()
    stages["optimizer"] += time.perf_counter() - tick


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/models/cpu.yaml")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--block", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=["ref", "ours", "ours_bf16"])
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (default: fashion-scenes, 96-128 px)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = workdir("train_step")
    cfg = load_config(args.config, DEFAULT_OVERRIDES + list(args.overrides) +
                      [f"output_dir={out / 'run'}", f"train.threads={args.threads}"])
    import shutil

    shutil.rmtree(out / "run", ignore_errors=True)
    run = setup(cfg)
    d, t = cfg.data, cfg.train
    masks = has_masks(cfg.model.meta_arch)
    # the reference: the same network (weights copied before any step) with torchvision's transform
    ref_model = copy.deepcopy(run.model)
    lo, hi = (d.train_scales[0], d.train_scales[-1])
    sizes = tuple(range(lo, hi + 1)) if d.scale_sampling == "range" else tuple(d.train_scales)
    tr = run.model.transform
    ref_model.transform = GeneralizedRCNNTransform(sizes, d.max_size, tr.image_mean, tr.image_std,
                                                   size_divisible=tr.size_divisible)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=run.plan.lr_at(20), momentum=t.momentum,
                              weight_decay=t.weight_decay)
    transform = TrainTransform(d.train_scales, d.scale_sampling, d.max_size, d.flip_prob, None)
    variants = [Variant(v) for v in args.variants]
    total = args.rounds * args.block * 4 + 10
    for rnd in range(args.rounds):
        for v in variants:
            if v.name == "ref":
                ref_model.train()
                it = iter(reference_loader(run.train_ds.records, masks, t.batch_size, d.num_workers, rnd))
            else:
                run.model.train()
                it = iter(train_loader(run.train_ds, transform, t.batch_size, t.seed, v.it, total, with_masks=masks,
                                       with_keypoints=False, num_workers=d.num_workers, group=d.aspect_ratio_grouping))
            with PeakRSS() as mem:
                for k in range(args.block):
                    timed = rnd > 0 and k > 0
                    stages = v.stages if timed else {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
                    tick = time.perf_counter()
                    images, targets = next(it)
                    stages["data"] += time.perf_counter() - tick
                    if v.name == "ref":
                        reference_step(ref_model, ref_opt, images, targets, stages)
                    else:
                        amp = torch.bfloat16 if v.name.endswith("bf16") else None
                        _step(run, v.it, images, targets, amp, None, stages)
                    v.it += 1
                    if timed:
                        v.times.append(time.perf_counter() - tick)
                        v.images += len(images)
            v.peak = max(v.peak, mem.peak)
            del it
    ref = next((v for v in variants if v.name == "ref"), variants[0])
    ips = {v.name: v.images / sum(v.times) for v in variants}
    rows = []
    for v in variants:
        n = len(v.times)
        total_s = sum(v.times)
        rows.append([v.name, f"{ips[v.name]:.2f}", f"{median(v.times):.3f}"] +
                    [f"{v.stages[s] / n:.3f}" for s in ("data", "forward", "backward", "optimizer")] +
                    [f"{100 * v.stages['data'] / total_s:.1f}%", f"{v.peak:.0f}", f"{ips[v.name] / ips[ref.name]:.2f}x"])
    print(f"## Training step: fromscratch vs torchvision's reference loop\n")
    print(f"`{args.config}` + {' '.join(DEFAULT_OVERRIDES + list(args.overrides))}; batch {t.batch_size}, "
          f"{args.threads} threads, {d.num_workers} workers; {args.rounds - 1} timed rounds of {args.block - 1} steps "
          f"per variant, alternating. {machine()}.\n")
    print(table(["variant", "images/s", "median s/step", "data s", "forward s", "backward s", "optimizer s",
                 "data share", "peak RSS MB", f"vs {ref.name}"], rows))
    print()
    if "ours" in ips and "ref" in ips:
        print(target("training step, ours fp32 vs reference", ips["ours"] / ips["ref"], 1.3))
    if "ours_bf16" in ips and "ref" in ips:
        print(target("training step, ours bf16 vs reference", ips["ours_bf16"] / ips["ref"], 1.3))
    np.random.seed(0)


if __name__ == "__main__":
    main()
