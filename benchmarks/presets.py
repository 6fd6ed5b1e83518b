"""Training step time of the model presets (batch 2, random 256 px images with 4 boxes and masks each).

Prints a table: median seconds per step over N steps after 2 warm-up steps, and the ratio to the CPU
preset measured in the same run (these machines are shared and noisy: compare ratios, not seconds).
Usage: python benchmarks/presets.py [--size 256] [--steps 5] [--threads 2] [--presets a.yaml b.yaml]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fromscratch.config import load_config
from fromscratch.models.build import build_model

PRESETS = ["configs/models/cpu.yaml", "configs/models/cpu_efficientnet_lite0_imagenet.yaml",
           "configs/models/mask_rcnn_R50_FPN_GN_scratch.yaml"]


def batch(size: int, gen: torch.Generator, n: int = 2, k: int = 4) -> tuple[list, list]:
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, size, size, generator=gen))
        xy = torch.rand(k, 2, generator=gen) * (size * 0.7)
        wh = size * 0.08 + torch.rand(k, 2, generator=gen) * size * 0.2
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for j, b in enumerate(boxes.int()):
            masks[j, b[1]:b[3], b[0]:b[2]] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 10, (k,), generator=gen), "masks": masks})
    return images, targets


def measure(preset: str, size: int, steps: int, amp: bool = False) -> float:
    cfg = load_config(preset, ["model.backbone.weights=null", "model.backbone.norm=GN"]
                      if "efficientnet" not in preset else [])
    model = build_model(cfg, 10).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):
        images, targets = batch(size, gen)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--bf16", action="store_true", help="also measure with bf16 autocast (train.amp=bf16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for p in args.presets:  # fp32 and bf16 of one preset side by side, so their ratio is fair
        bf16 = measure(p, args.size, args.steps, True) if args.bf16 else None
        rows.append((p, measure(p, args.size, args.steps), bf16))
    base = rows[0][1]
    head = f"| preset | s/step fp32 (batch 2, {args.size} px, {args.threads} threads) | vs first |"
    print(head + (" s/step bf16 | bf16 / fp32 |" if args.bf16 else ""))
    print("|---|---|---|" + ("---|---|" if args.bf16 else ""))
    for p, t, b in rows:
        extra = f" {b:.2f} | {b / t:.2f} |" if b is not None else ""
        print(f"| `{p}` | {t:.2f} | {t / base:.1f}x |" + extra)


if __name__ == "__main__":
    main()
