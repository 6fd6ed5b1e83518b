"""GPU check (`make gpu-check`): training throughput and memory on CUDA of the paper's model and of the
modern recipe, side by side with torchvision's reference training loop.

Rows, each one torchrun job over every visible GPU (DDP, NCCL; what `fromscratch train --nproc N` starts):
- ``ours``: engine.trainer.Trainer as `fromscratch train` sets it up (benchmarks/common.py bench_run), its
  loader and ``train_step`` timed, for the paper's R50-FPN GN Mask R-CNN
  (configs/models/mask_rcnn_R50_FPN_GN_scratch.yaml, short side 800, 2 images per GPU) and the modern LSJ
  recipe (configs/models/mask_rcnn_R50_FPN_SyncBN_LSJ_scratch.yaml: SyncBN, 4conv1fc, 2-conv RPN; at LSJ's
  1024 x 1024 canvas, 8 images per GPU, as detectron2's batch 64 on 8 GPUs), with train.amp=bf16 and
  fp16, in the default memory layout and with channels_last weights (kept where it pays).
- ``ref``: torchvision's reference loop (references/detection/train.py, engine.py):
  ``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` under DDP, a
  DataLoader decoding the images at native size with a random flip, the model resizing them, SGD, the
  loss dict all-reduced for logging, fp16 through a GradScaler; the same images, images per GPU, input
  size and autocast dtype as the row it stands beside.
Data: the embedded fashion-scenes (data/fashion-scenes/train.json, `make data`) upscaled to 1024 px
(images bilinear, masks nearest), written once under runs/bench/gpu_check/.
Printed: images/s (all GPUs), seconds per step, share of the step waiting for data, peak CUDA memory
(allocated, the largest of any GPU), the ratio to ``ref``, and which layout pays. Timing starts after
--warmup steps; every step ends with torch.cuda.synchronize(). A step whose loss is not finite skips its
update in both loops (scratch training at these LRs can blow up early) and is counted under the table.
Without a CUDA device it prints what it would measure and exits 0 (CI never runs the GPU part);
``--device cpu`` runs the same jobs on CPU processes (gloo) to check the script itself without a GPU.
Usage: python benchmarks/gpu_check.py [--iters 30] [--warmup 5] [--models paper modern] [--amp bf16 fp16]
       [--layouts default channels_last] [--nproc N] [--batch-per-gpu B] [--side 1024] [--images 1000]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_run, median, table, workdir  # noqa: E402

# name: (config, short side, max size, images per GPU): each at the resolution its recipe trains at
MODELS = {"paper": ("configs/models/mask_rcnn_R50_FPN_GN_scratch.yaml", 800, 1333, 2),
          "modern": ("configs/models/mask_rcnn_R50_FPN_SyncBN_LSJ_scratch.yaml", 1024, 1024, 8)}
REF_MODEL = "torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)"
SOURCE = ROOT / "data" / "fashion-scenes" / "train.json"
NO_CUDA = "no CUDA device found: nothing measured"
PAYS = 1.03  # channels_last is kept when it is at least this much faster (timing noise is ~1-2%)


# ----------------------------------------------------------------------------------------- data
def upscaled_scenes(src: Path, out: Path, side: int, n: int) -> Path:
    """The first ``n`` images of a COCO json (fashion-scenes) upscaled to ``side`` x ``side``: images
    bilinear (JPEG, quality 95), boxes and keypoints scaled, masks nearest-neighbour; written once (a stamp
    names the source, side and count)."""
    import numpy as np
    from PIL import Image

    from fromscratch.data.coco import load_coco, write_coco
    from fromscratch.data.masks import encode_mask
    from fromscratch.data.records import Dataset

    ann, stamp = out / "train.json", out / "stamp.json"
    key = {"source": str(src), "side": side, "images": n}
    if ann.exists() and stamp.exists() and json.loads(stamp.read_text()) == key:
        return ann
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    ds = load_coco(src, check_images=False)
    records = []
    for r in list(ds.records)[:n]:
        sx, sy = side / r.width, side / r.height
        rel = f"images/{r.image_id:07d}.jpg"
        with Image.open(r.file_name) as im:
            im.convert("RGB").resize((side, side), Image.BILINEAR).save(out / rel, quality=95)
        segs = None
        if r.segmentations is not None:
            segs = [encode_mask(np.asarray(Image.fromarray(m).resize((side, side), Image.NEAREST)))
                    for m in r.masks()]
        kps = None if r.keypoints is None else r.keypoints * np.asarray([sx, sy, 1], dtype=np.float32)
        r.file_name, r.file_ref, r.width, r.height = str(out / rel), rel, side, side
        r.boxes = r.boxes * np.asarray([sx, sy, sx, sy], dtype=np.float32)
        r.segmentations, r.keypoints = segs, kps
        records.append(r)
    info = {"info": {"description": f"{src} (first {len(records)} images) upscaled to {side} px"}}
    write_coco(Dataset(records, ds.categories, info=info), ann)
    stamp.write_text(json.dumps(key))
    return ann


# ----------------------------------------------------------------------------------------- workers
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _report(args: argparse.Namespace, device, times: list[float], waits: list[float], per_step: int,
            skipped: int, loaded: tuple[int, int] | None = None) -> None:
    """Rank 0 writes the job's result: step times (rank 0's, every step synchronized), peak memory, and the
    largest image the loader gave (``ours`` rows: the input as measured, LSJ canvas included)."""
    import torch

    from fromscratch import comm

    peak = (torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30) \
        if device.type == "cuda" else (float("nan"), float("nan"))
    peaks = comm.gather_objects(peak)
    if comm.is_main():
        res = {"times": times, "waits": waits, "images_per_step": per_step, "gpus": comm.world_size(),
               "skipped": skipped, "peak_alloc_gb": max(p[0] for p in peaks),
               "peak_reserved_gb": max(p[1] for p in peaks), "input": loaded}
        Path(args.out).write_text(json.dumps(res))


def sizes(args: argparse.Namespace, model: str) -> tuple[int, int]:
    """(short side, max size) of ``model``'s rows: its recipe's, or --size for both."""
    _, short, max_size, _ = MODELS[model]
    return (args.size, args.size) if args.size else (short, max_size)


def worker_ours(args: argparse.Namespace) -> None:
    """One ``ours`` row: the Trainer of `fromscratch train` on this rank, its loader, its train_step."""
    import torch

    from fromscratch import comm

    config = MODELS[args.model][0]
    short, max_size = sizes(args, args.model)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    total = args.warmup + args.iters
    over = [f"data.train={args.data}", "data.val=null", "data.image_root=null", "data.subset=null",
            f"data.train_scales=[{short}]", "data.scale_sampling=choice", f"data.max_size={max_size}",
            f"data.lsj_size={short}",  # an LSJ recipe's canvas (the modern row): --size shrinks it as well
            f"data.num_workers={args.workers}", "data.check_images=false",
            f"train.batch_size={args.batch_per_gpu * world}",
            "train.epochs=null", f"train.iterations={total}", "train.step_fractions=null", "train.steps=[]",
            f"train.warmup_iters={total - 1}", f"train.amp={args.amp}", "train.skip_nonfinite_steps=true",
            f"train.threads={args.threads}", f"train.device={args.device}"]
    _, trainer, make_loader = bench_run(f"gpu_check/{args.name}", config, over)
    device = trainer.device
    if args.layout == "channels_last":
        trainer.model.to(memory_format=torch.channels_last)
        if trainer.ddp is not trainer.model:  # DDP laid its gradient buckets out for the old strides: wrap
            trainer.ddp = None  # again (the old reducer's hooks go with it), or every step copies each gradient
            gc.collect()
            trainer.ddp = torch.nn.parallel.DistributedDataParallel(
                trainer.model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = iter(make_loader(args.workers, 0, total))
    times, waits, skipped, shapes = [], [], 0, set()
    for i in range(total):
        tick = time.perf_counter()
        images, targets = next(loader)
        wait = time.perf_counter() - tick
        shapes.update(tuple(im.shape[-2:]) for im in images)
        values = trainer.train_step(i, images, targets)
        skipped += not math.isfinite(sum(values.values()))  # train.skip_nonfinite_steps: no update
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - tick)
            waits.append(wait)
    _report(args, device, times, waits, args.batch_per_gpu * comm.world_size(), skipped, max(shapes))
    trainer.close()
    if comm.is_dist():
        torch.distributed.destroy_process_group()


def worker_ref(args: argparse.Namespace) -> None:
    """One ``ref`` row: torchvision's Mask R-CNN in its reference training loop, on this rank's images."""
    import torch
    import torchvision
    from torch.utils.data import DataLoader, DistributedSampler

    from fromscratch import comm
    from fromscratch.data.coco import load_coco
    from train_step import ReferenceSet, _collate

    short, max_size = sizes(args, args.model)
    device = comm.pick_device(args.device)
    comm.init_from_env(device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load_coco(args.data, check_images=False)
    sampler = DistributedSampler(range(len(ds.records)), comm.world_size(), comm.rank(), shuffle=True, seed=0) \
        if comm.is_dist() else None
    data = ReferenceSet(list(ds.records), with_masks=True)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=ds.num_classes + 1, min_size=short, max_size=max_size)
    model.to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if comm.is_dist() else model
    lr = 0.02 * args.batch_per_gpu * comm.world_size() / 16  # the reference's 0.02 at 16 images, scaled
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)
    total = args.warmup + args.iters
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.001 + (1 - 0.001) * min(1.0, i / total))
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    dl = DataLoader(data, batch_size=args.batch_per_gpu, sampler=sampler, shuffle=sampler is None,
                    num_workers=args.workers, collate_fn=_collate, drop_last=True, pin_memory=device.type == "cuda",
                    persistent_workers=args.workers > 0)

    def batches():
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield from dl
            epoch += 1

    loader = batches()
    times, waits, skipped = [], [], 0
    for i in range(total):
        tick = time.perf_counter()
        images, targets = next(loader)
        wait = time.perf_counter() - tick
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss_dict = ddp(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        if comm.is_dist():  # utils.reduce_dict: the losses averaged over processes, for logging
            vals = torch.stack([v.detach() for v in loss_dict.values()])
            torch.distributed.all_reduce(vals)
        opt.zero_grad()
        if not torch.isfinite(losses).item():  # the reference exits here; a speed check skips the update
            skipped += 1
        elif scaler is not None:
            scaler.scale(losses).backward()
            scaler.step(opt)
            scaler.update()
        else:
            losses.backward()
            opt.step()
        warm.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - tick)
            waits.append(wait)
    _report(args, device, times, waits, args.batch_per_gpu * comm.world_size(), skipped)
    if comm.is_dist():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------- parent
def plan_rows(args: argparse.Namespace) -> list[dict]:
    """Every job to run: ours per model x amp x layout, ref once per (input size, images per GPU, amp)."""
    rows, refs = [], {}
    for model in args.models:
        short, max_size = sizes(args, model)
        per_gpu = args.batch_per_gpu or MODELS[model][3]
        for amp in args.amp:
            key = (short, max_size, per_gpu, amp)
            if key not in refs:
                refs[key] = {"kind": "ref", "model": model, "amp": amp, "layout": "default", "per_gpu": per_gpu,
                             "name": f"ref_{short}_{per_gpu}_{amp}"}
                rows.append(refs[key])
            for layout in args.layouts:
                rows.append({"kind": "ours", "model": model, "amp": amp, "layout": layout, "per_gpu": per_gpu,
                             "name": f"ours_{model}_{amp}_{layout}", "ref": refs[key]["name"]})
    return rows


def describe(args: argparse.Namespace, nproc: int | str, verb: str = "Measures") -> str:
    """What the check measures, in lines of at most 116 characters."""
    over = f"{nproc} GPU(s) (DDP, NCCL)" if args.device == "cuda" else f"{nproc} CPU process(es) (DDP, gloo)"
    items = [f"{verb}, over {over}, {args.warmup} warm-up + {args.iters} timed steps per row, AMP "
             f"{' and '.join(args.amp)}, layouts {' and '.join(args.layouts)}, on {SOURCE.relative_to(ROOT)} "
             f"upscaled to {args.side} px ({args.images} images):"]
    for m in args.models:
        config, _, _, per_gpu = MODELS[m]
        short, max_size = sizes(args, m)
        items.append(f"- ours `{m}`: {config}, short side {short} (max {max_size}), "
                     f"{args.batch_per_gpu or per_gpu} images/GPU")
    items.append(f"- ref: {REF_MODEL} in torchvision's reference loop (plain SGD), on the same images, sizes and "
                 "images per GPU")
    items.append("Printed: images/s, s/step, data wait, peak CUDA memory, ratio to ref, whether channels_last pays.")
    return "\n".join(textwrap.fill(t, 116, subsequent_indent="  " if t.startswith("-") else "") for t in items)


def run_job(args: argparse.Namespace, row: dict, data: Path, nproc: int, logs: Path) -> dict:
    out = logs / f"{row['name']}.json"
    out.unlink(missing_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = launcher + [__file__, "--worker", row["kind"], "--name", row["name"], "--model", row["model"],
                      "--amp", row["amp"], "--layout", row["layout"], "--out", str(out), "--data", str(data),
                      "--batch-per-gpu", str(row["per_gpu"]), "--iters", str(args.iters), "--warmup",
                      str(args.warmup), "--workers", str(args.workers), "--threads", str(args.threads),
                      "--device", args.device] + (["--size", str(args.size)] if args.size else [])
    log = logs / f"{row['name']}.log"
    tick = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    print(f"   {row['name']}: {time.perf_counter() - tick:.0f} s", flush=True)
    if rc == 0 and out.exists():
        return json.loads(out.read_text())
    errors = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
              if "Error" in ln or "error:" in ln or "out of memory" in ln]
    return {"failed": f"exit {rc}: {errors[-1][:160] if errors else 'see ' + str(log)}"}


def gpu_names() -> str:
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))


def report(args: argparse.Namespace, rows: list[dict], results: dict[str, dict], nproc: int) -> None:
    import torch

    from fromscratch.data.transforms import resized_shape

    ips = {n: r["images_per_step"] * len(r["times"]) / sum(r["times"]) for n, r in results.items()
           if "failed" not in r and r["times"]}
    out = []
    for row in rows:
        r, name = results[row["name"]], row["name"]
        h, w = r.get("input") or resized_shape(args.side, args.side, *sizes(args, row["model"]))[:2]
        what = REF_MODEL.split("(")[0].rsplit(".", 1)[-1] if row["kind"] == "ref" else row["model"]
        head = [row["kind"], what, row["amp"], row["layout"], f"{h}x{w}", f"{row['per_gpu']} x {nproc}"]
        if name not in ips:
            out.append(head + [r.get("failed", "no timed steps"), "", "", "", ""])
            continue
        vs = f"{ips[name] / ips[row['ref']]:.2f}x" if row["kind"] == "ours" and row["ref"] in ips else ""
        peak = f"{r['peak_alloc_gb']:.1f}" if args.device == "cuda" else "-"
        out.append(head + [f"{ips[name]:.2f}", f"{median(r['times']):.3f}",
                           f"{100 * sum(r['waits']) / sum(r['times']):.1f}%", peak, vs])
    device = gpu_names() if args.device == "cuda" else f"CPU ({args.device}, checking the script only)"
    print("## GPU check: training throughput, fromscratch vs torchvision's reference loop\n")
    print(f"{device}; torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}; "
          f"{nproc} process(es), DDP; {args.warmup} warm-up + {args.iters} timed steps per row; fashion-scenes "
          f"upscaled to {args.side} px; images/s over all GPUs; peak = torch.cuda.max_memory_allocated, the "
          f"largest of any GPU; `vs ref` = images/s over the ref row at the same size, images per GPU and AMP.\n")
    print(table(["loop", "model", "amp", "layout", "input", "images/GPU x GPUs", "images/s", "median s/step",
                 "data wait", "peak GB", "vs ref"], out))
    print()
    for name, r in results.items():
        if r.get("skipped"):
            print(f"- {name}: {r['skipped']} step(s) had a non-finite loss and skipped the update (faster steps)")
    for model in args.models:
        for amp in args.amp:
            base, cl = f"ours_{model}_{amp}_default", f"ours_{model}_{amp}_channels_last"
            kept = base if base in ips else cl
            if base in ips and cl in ips:
                gain = ips[cl] / ips[base]
                kept = cl if gain >= PAYS else base
                verdict = "pays: use it" if kept == cl else "does not pay: default layout kept"
                print(f"- channels_last for `{model}`, {amp}: {gain:.2f}x the default layout: {verdict}")
            ref = next((r["ref"] for r in rows if r["name"] == kept), None)
            if kept in ips and ref in ips:
                layout = "channels_last" if kept == cl else "default"
                print(f"- `{model}` {amp} ({layout} layout): {ips[kept]:.2f} images/s = "
                      f"{ips[kept] / ips[ref]:.2f}x torchvision's reference loop")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--amp", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16", "none"])
    ap.add_argument("--layouts", nargs="+", default=["default", "channels_last"], choices=["default", "channels_last"])
    ap.add_argument("--iters", type=int, default=30, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--nproc", type=int, help="processes, one per GPU (default: every visible GPU)")
    ap.add_argument("--batch-per-gpu", type=int, help="images per GPU (default: paper 2, modern 8)")
    ap.add_argument("--side", type=int, default=1024, help="side of the upscaled scenes (px)")
    ap.add_argument("--images", type=int, default=1000, help="scenes to upscale (fashion-scenes has 1,000)")
    ap.add_argument("--size", type=int, help="short side, max size and LSJ canvas for every row instead of each "
                    "recipe's (e.g. small, with --device cpu)")
    ap.add_argument("--workers", type=int, help="loader workers per process (default: cores / processes, <= 6)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per row before it is reported failed")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: run the same jobs on CPU processes (gloo), to check this script without a GPU")
    for hidden in ("--worker", "--name", "--model", "--layout", "--out", "--data"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.amp = args.amp[0]
        (worker_ours if args.worker == "ours" else worker_ref)(args)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("## GPU check\n")
        print(describe(args, "all visible", "Would measure"))
        print(f"\n{NO_CUDA} (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); run "
              "`make gpu-check` on a machine\nwith NVIDIA GPUs. Exiting 0.")
        return 0
    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 1)
    if args.workers is None:  # 0 (load in the training process) is a choice, not the default
        args.workers = max(1, min(6, (os.cpu_count() or 2) // nproc - 1))
    if not SOURCE.exists():
        print(f"{SOURCE} missing: run `make data` first")
        return 1
    print(describe(args, nproc), flush=True)
    data = upscaled_scenes(SOURCE, workdir("gpu_check") / f"scenes_{args.side}", args.side, args.images)
    logs = workdir("gpu_check/logs")
    rows = plan_rows(args)
    results = {row["name"]: run_job(args, row, data, nproc, logs) for row in rows}
    print()
    report(args, rows, results, nproc)
    return 0 if all("failed" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
