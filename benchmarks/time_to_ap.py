"""Time to a fixed val AP: the CPU preset against torchvision's default heads on the same trunk.

Both models (configs/models/cpu.yaml and configs/models/cpu_torchvision_heads.yaml: same ResNet-18-GN
trunk, anchors, data, batch, recipe; only the FPN width and the heads differ) train with
fromscratch's trainer pieces in alternating time slices (so both see the same machine conditions),
each evaluated every --eval-every of its own iterations on the same val images. Training wall time
counts, evaluation time does not (it is reported apart). An arm stops at the target AP (default box
AP 20 on fashion-scenes: a detector that finds most objects), or when its training time passes
--cap-ratio x the other arm's time to the target: then the ratio at the target is a lower bound (">"),
and a second, exact ratio is read off both curves at the best AP the slower arm did reach (each arm's
training time to its first evaluation at or above it).
Usage: python benchmarks/time_to_ap.py [--dataset fashion-scenes|trees] [--target 20] [--cap-ratio 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_run, machine, table, target  # noqa: E402
from fromscratch.engine.hooks import EvalHook  # noqa: E402
from fromscratch.errors import FromScratchError  # noqa: E402

DATASETS = {
    "fashion-scenes": ["data.train=data/fashion-scenes/train.json", "data.val=data/fashion-scenes/val.json",
                       "data.train_scales=[96,128]", "data.scale_sampling=range", "data.test_scale=112",
                       "data.max_size=187"],
    "trees": ["data.train=data/trees/train.json", "data.val=data/trees/val.json", "model.meta_arch=faster_rcnn",
              "data.train_scales=[224,288]", "data.scale_sampling=range", "data.test_scale=256",
              "data.max_size=427"],
}
# each arm with its own recipe's LR: ours as configs/demo.yaml (0.08 at 16 images, i.e. 0.01 at batch 2);
# torchvision's references train these heads at 0.02 (0.0025 at batch 2) with a long warm-up, and at
# 0.08 they diverge from scratch within 30 iterations (no norm in FPN and heads; measured)
ARMS = {"cpu preset": ("configs/models/cpu.yaml", ["train.base_lr=0.08", "train.warmup_iters=20"]),
        "torchvision heads": ("configs/models/cpu_torchvision_heads.yaml",
                              ["train.base_lr=0.02", "train.warmup_iters=100"])}


class Arm:
    def __init__(self, name: str, config: str, overrides: list[str], threads: int):
        self.name = name
        self.cfg, self.run, make_loader = bench_run(f"time_to_ap/{name.replace(' ', '_')}", config,
                                                    overrides + [f"train.threads={threads}"])
        self.loader = iter(make_loader(self.cfg.data.num_workers, 0, self.run.plan.total_iters))
        self.evaluator = next(h for h in self.run.hooks if isinstance(h, EvalHook))
        self.it, self.train_s, self.eval_s, self.ap, self.reached = 0, 0.0, 0.0, 0.0, None
        self.curve: list[tuple[int, float, float]] = []
        self.diverged = ""

    def slice(self, seconds: float, eval_every: int, goal: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and self.reached is None and not self.diverged:
            tick = time.perf_counter()
            images, targets = next(self.loader)
            self.run.model.train()
            try:
                self.run.train_step(self.it, images, targets)
            except FromScratchError as e:  # a non-finite loss: this arm is out, and the table says so
                self.diverged = str(e).split(";")[0]
                return
            self.it += 1
            self.train_s += time.perf_counter() - tick
            if self.it % eval_every == 0:
                tick = time.perf_counter()
                m = self.evaluator.evaluate(self.it)
                self.eval_s += time.perf_counter() - tick
                self.ap = float(m["bbox"]["AP"])
                self.curve.append((self.it, self.train_s, self.ap))
                if self.ap >= goal:
                    self.reached = self.train_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-scenes")
    ap.add_argument("--target", type=float, default=20.0, help="bbox AP to reach")
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--cap-ratio", type=float, default=3.0)
    ap.add_argument("--max-minutes", type=float, default=12.0, help="cap on the fast arm's training time")
    ap.add_argument("--slice", type=float, default=20.0, help="seconds per alternating slice")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    common = DATASETS[args.dataset] + [f"eval.max_images={args.val_images}", "data.num_workers=2",
                                       "train.iterations=100000", "train.steps=[]"]
    arms = [Arm(n, c, common + extra, args.threads) for n, (c, extra) in ARMS.items()]
    fast, slow = arms

    def cap(a: Arm) -> float:
        other = slow if a is fast else fast
        if other.reached is not None:
            return args.cap_ratio * other.reached
        return args.max_minutes * 60 * (args.cap_ratio if a is slow else 1)

    while True:
        if fast.reached is None and fast.train_s >= cap(fast):
            break  # the preset did not reach the target: nothing to compare
        if fast.diverged:
            break
        active = [a for a in arms if a.reached is None and not a.diverged and a.train_s < cap(a)]
        if not active:
            break
        for a in active:
            a.slice(min(args.slice, cap(a) - a.train_s), args.eval_every, args.target)
    rows = []
    for a in arms:
        reached = f"{a.reached:.0f} s" if a.reached is not None else \
            (a.diverged if a.diverged else f"not within {a.train_s:.0f} s")
        per_it = a.train_s / max(1, a.it)
        rows.append([a.name, f"`{ARMS[a.name][0]}` {' '.join(ARMS[a.name][1])}", a.it, f"{per_it:.2f}", reached,
                     f"{a.ap:.2f}", f"{a.eval_s:.0f} s",
                     " ".join(f"{i}:{ap:.1f}" for i, _, ap in a.curve)])
    print(f"## Time to bbox AP {args.target} on {args.dataset}\n")
    print(f"{' '.join(common)}; batch 2, {args.threads} threads; AP on the first {args.val_images} val images "
          f"every {args.eval_every} iterations (eval time not counted). {machine()}.\n")
    print(table(["arm", "config", "iterations", "train s/it", "time to target", "last AP", "eval time",
                 "AP by iteration"], rows))
    print()
    if fast.reached is None:
        print(f"- target time to AP {args.target}: the CPU preset did not reach it in {fast.train_s:.0f} s "
              "(raise --max-minutes or lower --target)")
    elif slow.diverged:
        print(f"- target time to AP {args.target}: torchvision heads diverged ({slow.diverged})")
    elif slow.reached is None:
        ratio = slow.train_s / fast.reached
        print(target("time to AP, CPU preset vs torchvision heads (lower bound)", ratio, 5.0) +
              f" (torchvision heads still at AP {slow.ap:.2f} after {slow.train_s:.0f} s)")
    else:
        print(target("time to AP, CPU preset vs torchvision heads", slow.reached / fast.reached, 5.0))
    best = max((ap for _, _, ap in slow.curve), default=0.0)
    if slow.reached is None and best > 0:
        t_fast, t_slow = time_to(fast.curve, best), time_to(slow.curve, best)
        if t_fast is not None and t_slow is not None:
            print(f"- at the best AP the torchvision heads reached ({best:.1f}): {t_slow:.0f} s against "
                  f"{t_fast:.0f} s for the CPU preset, {t_slow / t_fast:.2f}x")


def time_to(curve: list[tuple[int, float, float]], ap: float) -> float | None:
    """Training seconds to the first evaluation at or above ``ap`` on a (iteration, seconds, AP) curve."""
    return next((s for _, s, a in curve if a >= ap), None)


if __name__ == "__main__":
    main()
