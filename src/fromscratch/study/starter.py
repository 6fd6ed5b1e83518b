"""`fromscratch init DATASET --out study.yaml`: a commented starter study for the user's own data.

It reads the dataset with every check a run makes (so a broken file fails here, named), measures it
(images, categories, image sizes, object sizes, masks, keypoints) and writes a study whose settings
follow from what it measured: scales near the images' own, anchors that cover the objects at that
scale, a data-size ladder down from the dataset's size, the paper's schedules, the hardware it finds.
The file is loaded back through the study loader before it is written, so it always plans.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fromscratch.config import DataConfig
from fromscratch.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"  # the repository's configs (an editable install)


@dataclass
class Measured:
    images: int
    val_images: int
    categories: list[str]
    instances_per_image: float
    short_side: float  # median
    long_side: float  # median
    object_px: tuple[float, float, float]  # 5th, 50th, 95th percentile of sqrt(box area), original pixels
    masks: bool
    keypoints: bool


def measure(train: str, val: str | None) -> Measured:
    from fromscratch.data.build import build_dataset

    d = DataConfig(train=train, val=val, check_images=False)
    ds = build_dataset(d, "train")
    vs = build_dataset(d, "val") if val else None
    recs = list(ds.records)
    if not recs:
        raise ConfigError(f"{train}: no training images")
    sides = np.array([(min(r.width, r.height), max(r.width, r.height)) for r in recs], dtype=float)
    boxes = np.concatenate([r.boxes[~r.iscrowd] for r in recs if len(r.boxes)] or [np.zeros((0, 4))])
    size = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    pct = tuple(float(np.percentile(size, q)) for q in (5, 50, 95)) if len(size) else (32.0, 64.0, 128.0)
    return Measured(len(recs), len(vs.records) if vs else 0, ds.class_names, ds.num_instances() / len(recs),
                    float(np.median(sides[:, 0])), float(np.median(sides[:, 1])), pct, ds.has_masks,
                    ds.has_keypoints)


def round_sig(x: float) -> int:
    """One significant digit (300, 100, 30), at least 1."""
    if x < 1:
        return 1
    p = 10 ** int(math.floor(math.log10(x)))
    return int(round(x / p) * p)


def size_ladder(n: int, smallest: int | None = None, most: int = 3) -> list[int | str]:
    """all, then about n/3.3, n/10, n/33 (the paper's 118k -> 35k -> 10k -> 1k has that shape), each
    rounded to one significant digit, down to ``smallest`` images (30, or fewer for a small dataset)."""
    smallest = smallest or min(30, max(8, n // 4))
    out: list[int | str] = ["all"]
    for div in (10 / 3, 10, 100 / 3, 100, 1000 / 3):
        k = round_sig(n / div)
        if smallest <= k < n and k not in out and len(out) <= most:
            out.append(k)
    return out


def scales(m: Measured, gpu: bool) -> tuple[int, int]:
    """(short side, max long side) to train and test at: the paper's 800/1333 for large images on a GPU,
    else the images' own median short side (capped at 800; 256 on a CPU), keeping their aspect."""
    cap = 800 if gpu else 256
    short = int(min(cap, 32 * round(m.short_side / 32)) or 32)
    return short, int(math.ceil(short * max(1.0, m.long_side / max(1.0, m.short_side)) / 32) * 32)


def anchors(m: Measured, short: int) -> list[int]:
    """Five anchor sizes (FPN P2-P6, doubling): the smallest near the 5th percentile of the objects'
    size once resized to ``short``, as a power of two, at least 8 px."""
    scale = short / max(1.0, m.short_side)
    lo = max(8, 2 ** int(round(math.log2(max(1.0, m.object_px[0] * scale)))))
    return [lo * 2 ** i for i in range(5)]


def warmup(detector: Path, ladder: list[int | str], images: int) -> tuple[int, int]:
    """(the preset's warm-up, a warm-up shorter than the first LR drop of 1x at the smallest size)."""
    from fromscratch.config import load_config
    from fromscratch.engine.schedule import make_plan

    t = load_config(detector).train
    n = min([int(s) for s in ladder if s != "all"] + [images])
    first = make_plan(t.model_copy(update={"schedule": "1x", "warmup_iters": 0}), n).steps[0]
    return t.warmup_iters, min(t.warmup_iters, max(1, first // 3))


def hardware() -> tuple[bool, int, int]:
    """(CUDA available, GPUs, CPU cores this process may use)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus > 0, gpus, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def starter_text(train: str, val: str, m: Measured, weights: str | None, out_dir: str) -> str:
    gpu, gpus, cores = hardware()
    short, max_size = scales(m, gpu)
    anc = anchors(m, short)
    meta = "mask_rcnn" if m.masks else "faster_rcnn"
    detector = CONFIGS / "models" / ("mask_rcnn_R50_FPN_GN_scratch.yaml" if gpu else "cpu.yaml")
    ladder = size_ladder(m.images)
    pre = (f"  - {{name: pretrained, weights: {weights}}}  # the trunk weights you named (same trunk, FPN, heads)"
           if weights else
           "  # no --weights given: the study's own classification pre-training stage (pretrain: below) stands in\n"
           "  # for ImageNet; for the real question, name ImageNet trunk weights: `fromscratch init ... --weights\n"
           "  # resnet50.pth` (a torchvision or timm state dict for the detector's trunk)\n  - pretrained")
    hw = (f"# hardware found: {gpus} CUDA GPU(s): each run uses all of them (torchrun, nproc)" if gpu else
          f"# hardware found: no CUDA GPU, {cores} CPU core(s): {min(cores, 4)} runs at once, 1 thread each")
    warm = warmup(detector, ladder, m.images)
    warm_line = (f"\n  # warm-up shortened to a third of the first LR drop at {ladder[-1]} images, 1x\n"
                 f"  train.warmup_iters: {warm[1]}" if warm[1] < warm[0] else "")
    stage = "" if weights else (
        "# the pre-training stage (arm `pretrained`): a classifier on `source` (an ImageNet-style folder\n"
        "# train/<class>/*.jpg, or the embedded fashion-mnist), then its trunk in the detector\n"
        "pretrain: {source: fashion-mnist, epochs: 1, image_size: 32}\n")
    run_at = f"nproc: {gpus}\nparallel: 1" if gpu else f"nproc: 1\nparallel: {min(cores, 4)}"
    obj = " / ".join(f"{v:.0f}" for v in m.object_px)
    kp = ("\n# keypoints found: for keypoint AP, add an arm pair with model.meta_arch: keypoint_rcnn"
          if m.keypoints else "")
    return f"""# Starter study written by `fromscratch init` for {train}
# Measured: {m.images} training images, {m.val_images} validation images, {len(m.categories)} categories
# ({", ".join(m.categories[:8])}{", ..." if len(m.categories) > 8 else ""}),
# {m.instances_per_image:.1f} instances per image, median image {m.short_side:.0f} x {m.long_side:.0f} px (short x long
# side), objects (sqrt of box area) {obj} px at the 5th / 50th / 95th percentile,
# masks: {"yes" if m.masks else "no"}, keypoints: {"yes" if m.keypoints else "no"}.{kp}
{hw}
# Next: `fromscratch study THIS_FILE --plan-only` prints every run and the estimated time, then
# `fromscratch study THIS_FILE` trains, and `fromscratch report {out_dir}` rebuilds the report.
description: "scratch vs pre-trained on {Path(train).parent.name or Path(train).stem}"
detector: {detector}
overrides:
  data.train: {train}
  data.val: {val}
  model.meta_arch: {meta}  # {"masks found: box and mask AP" if m.masks else "no masks found: box AP only"}
  # images resized to a short side of {short} px (their median is {m.short_side:.0f}), long side at most {max_size}
  data.train_scales: [{short}]
  data.test_scale: {short}
  data.max_size: {max_size}
  # one anchor size per FPN level, the smallest near the 5th percentile of object size at that scale
  model.rpn.anchor_sizes: {anc}{warm_line}
arms:
  - scratch  # random (MSRA) init, GroupNorm everywhere, nothing frozen: the paper's recipe
{pre}
# Nx = N x the paper's 90k iterations at 16 images, rescaled to the same epochs on this dataset; scratch
# needed about 3x on COCO to catch up with pre-training, more with less data.
schedules: [1x, 2x, 3x]
# the whole set, then about 1/3, 1/10, 1/33 of it (the paper went 118k -> 35k -> 10k -> 1k images)
data_sizes: {ladder}
seeds: [0]
# adaptive: train the short schedules first, extend or add seeds (up to max_seeds) only where the verdict
# is still undecided, and skip what cannot change it
adaptive: true
max_seeds: 3
margin: 1.0  # AP: "scratch matches pre-training" only when the gap's whole interval lies within +-1 AP
eval_points: 4
{run_at}
{stage}output_dir: {out_dir}
"""


def write_starter(dataset: str, out: Path, val: str | None = None, weights: str | None = None,
                  output_dir: str | None = None) -> tuple[Path, Measured]:
    """Measure ``dataset`` (and its validation set: ``val``, or a ``val.json`` beside a ``train.json``),
    write the starter study to ``out`` and check that it loads as a study."""
    from fromscratch.study.plan import base_config, load_study, plan_runs

    train = str(Path(dataset).resolve())
    if val is None:
        guess = Path(train).with_name(Path(train).name.replace("train", "val"))
        if guess != Path(train) and guess.exists():
            val = str(guess)
    if val is None:
        raise ConfigError(f"{dataset}: no validation set found beside it (looked for a name with 'train' "
                          "replaced by 'val'): give one with --val")
    val = str(Path(val).resolve())
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"--weights {weights}: file not found")
    if not CONFIGS.is_dir():
        raise ConfigError(f"{CONFIGS}: the detector presets are not there (fromscratch installed without its "
                          "repository?); run from a clone: pip install -e .")
    m = measure(train, val)
    out = Path(out)
    text = starter_text(train, val, m, str(Path(weights).resolve()) if weights else None,
                        output_dir or str(out.with_suffix("").resolve()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.check.yaml")
    tmp.write_text(text)
    try:
        study, base = load_study(tmp)
        base_config(study, base)
        plan_runs(study, base, Path(study.output_dir), m.images)  # every run's config and schedule check
    finally:
        tmp.unlink(missing_ok=True)
    from fromscratch.utils import atomic_write_text

    atomic_write_text(out, text, "starter study")
    return out, m
