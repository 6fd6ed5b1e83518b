"""FLOPs per training step over the machine's measured peak: the fraction of the physical limit reached.

FLOPs of one training step (forward + backward) of the model, counted by torch.utils.flop_counter
(convolutions and matrix products; RoIAlign, NMS, norms and element-wise ops count 0, so this is a lower
bound of the work), per top-level part. Peak: the best of a 2048x2048 fp32 matmul and a 3x3 conv
(8x64x56x56) measured here with the same threads. Achieved = FLOPs / median step time.
Usage: python benchmarks/flops.py [--config configs/models/cpu.yaml] [--steps 5]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OVERRIDES, bench_args, bench_run, machine, median, table  # noqa: E402


def peak_gflops(reps: int = 5) -> tuple[float, float]:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = []
    for _ in range(reps):
        tick = time.perf_counter()
        a @ b
        mm.append(2 * 2048 ** 3 / (time.perf_counter() - tick) / 1e9)
    x, conv = torch.randn(8, 64, 56, 56), torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    flops = 2 * 8 * 64 * 64 * 9 * 56 * 56
    cv = []
    with torch.no_grad():
        for _ in range(reps):
            tick = time.perf_counter()
            conv(x)
            cv.append(flops / (time.perf_counter() - tick) / 1e9)
    return max(mm), max(cv)


def main() -> None:
    args = bench_args(__doc__, 5)
    cfg, run, loader = bench_run("flops", args.config, DEFAULT_OVERRIDES + list(args.overrides))
    t = cfg.train
    batches = list(loader(0, 0, args.steps + 3))
    for i in range(2):
        run.train_step(i, *batches[i])
    counter = FlopCounterMode(display=False, depth=2)
    with counter:
        run.train_step(2, *batches[2])
    per_part = {k: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.count(".") == 1}
    total = counter.get_total_flops()
    times = []
    for i, b in enumerate(batches[3:], start=3):
        tick = time.perf_counter()
        run.train_step(i, *b)
        times.append(time.perf_counter() - tick)
    step = median(times)
    mm, cv = peak_gflops()
    peak = max(mm, cv)
    achieved = total / step / 1e9
    rows = [[k.split(".", 1)[1], f"{v / 1e9:.2f}", f"{100 * v / total:.0f}%"] for k, v in
            sorted(per_part.items(), key=lambda kv: -kv[1])]
    print("## FLOPs per training step vs the machine's peak\n")
    print(f"`{args.config}` + {' '.join(DEFAULT_OVERRIDES + list(args.overrides))}; batch {t.batch_size}, "
          f"{args.threads} threads. {machine()}.\n")
    print(table(["part", "GFLOP per step (fwd+bwd)", "share"], rows))
    print()
    print(table(["quantity", "value"], [
        ["GFLOP per training step (conv + matmul)", f"{total / 1e9:.2f}"],
        ["median step time (s)", f"{step:.3f}"],
        ["achieved GFLOP/s", f"{achieved:.1f}"],
        ["peak: fp32 matmul 2048^2 GFLOP/s", f"{mm:.1f}"],
        ["peak: 3x3 conv 8x64x56x56 GFLOP/s", f"{cv:.1f}"],
        ["fraction of peak reached", f"{100 * achieved / peak:.1f}%"]]))
    print()
    print(f"- the step reaches {100 * achieved / peak:.1f}% of the measured peak; the operator profile under "
          "\"Training step\" shows where the time goes (operators on small RoI-sized tensors, RoIAlign, "
          "GroupNorm and element-wise work that this count leaves out)")


if __name__ == "__main__":
    main()
