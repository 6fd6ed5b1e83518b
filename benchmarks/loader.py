"""Data loading against the training step's demand.

1. The loader alone (data/loader.py: workers decode, resize, flip, build masks) for 0, 1 and 2 workers:
   images/s with no training.
2. The training step alone (engine.trainer.Trainer.train_step on batches already in memory): images/s it consumes.
3. Training as `fromscratch train` runs it (loader with --workers workers feeding train_step): the share of
   wall time the step waits for data (the trainer's data_time), the number the target is about.
Usage: python benchmarks/loader.py [--steps 30] [--workers 2]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OVERRIDES, bench_args, bench_run, machine, table, target  # noqa: E402


def main() -> None:
    args = bench_args(__doc__, 30)
    cfg, run, loader = bench_run("loader", args.config, DEFAULT_OVERRIDES + list(args.overrides))
    t = cfg.train

    rows = []
    for w in (0, 1, 2):
        it = iter(loader(w, 0, args.steps + 2))
        next(it)  # worker start-up is not throughput
        tick = time.perf_counter()
        n = sum(len(images) for images, _ in it)
        rows.append([f"loader alone, {w} workers", f"{n / (time.perf_counter() - tick):.1f}", "", ""])
    batches = list(loader(0, 1000, args.steps + 2))
    for i, (images, targets) in enumerate(batches[:2]):
        run.train_step(i, images, targets)
    tick = time.perf_counter()
    for i, (images, targets) in enumerate(batches[2:], start=2):
        run.train_step(i, images, targets)
    step_ips = sum(len(b[0]) for b in batches[2:]) / (time.perf_counter() - tick)
    rows.append(["training step alone (batches in memory)", f"{step_ips:.1f}", "", ""])
    it = iter(loader(args.workers, 2000, args.steps + 2))
    for i in range(2):
        images, targets = next(it)
        run.train_step(i, images, targets)
    wait = total = 0.0
    n = 0
    tick = time.perf_counter()
    for i, (images, targets) in enumerate(it, start=2):
        got = time.perf_counter()
        wait += got - tick
        run.train_step(i, images, targets)
        n += len(images)
        now = time.perf_counter()
        total += now - tick
        tick = now
    share = 100 * wait / total
    rows.append([f"training with the loader, {args.workers} workers", f"{n / total:.1f}",
                 f"{1000 * wait / args.steps:.1f}",
                 f"{share:.1f}%"])
    print("## Data loading vs the training step\n")
    print(f"`{args.config}` + {' '.join(DEFAULT_OVERRIDES + list(args.overrides))}; batch {t.batch_size}, "
          f"{args.threads} threads, {args.steps} steps. {machine()}.\n")
    print(table(["measurement", "images/s", "data wait ms/step", "data wait share"], rows))
    print()
    print(target(f"data loading share of step time at {args.workers} workers", share, 5.0, unit="%", higher=False))


if __name__ == "__main__":
    main()
