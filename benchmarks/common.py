"""Shared by the benchmarks: machine facts, a peak-memory sampler, markdown tables, a scratch folder.

Every benchmark prints one markdown section (a title, a table, a line per target: met or the measured
gap) so `make bench` (benchmarks/run_all.py) can put them together in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Highest resident memory (MB) of this process while the context is open, sampled every 2 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, Python {platform.python_version()}")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def target(name: str, value: float, goal: float, unit: str = "x", higher: bool = True, why: str = "") -> str:
    ok = value >= goal if higher else value <= goal
    sign = ">=" if higher else "<="
    verdict = "met" if ok else f"NOT met{': ' + why if why else ''}"
    return f"- target {name}: {value:.2f}{unit} (goal {sign} {goal:g}{unit}): {verdict}"


def workdir(name: str) -> Path:
    path = Path(os.environ.get("FROMSCRATCH_BENCH_DIR", ROOT / "runs" / "bench")) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# The benchmarks' default data: fashion-scenes at the demo's scales (96-128 px, Mask R-CNN targets).
DEFAULT_OVERRIDES = ["data.train=data/fashion-scenes/train.json", "data.val=null", "data.train_scales=[96,128]",
                     "data.scale_sampling=range", "data.test_scale=112", "data.max_size=187",
                     "data.num_workers=2", "train.base_lr=0.02", "train.warmup_iters=10", "train.schedule=1x"]


def bench_args(description: str, steps: int) -> argparse.Namespace:

    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default="configs/models/cpu.yaml")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (default: fashion-scenes, 96-128 px)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def bench_run(name: str, config: str, overrides: list[str]):
    """A training run of ``config`` + ``overrides`` set up as `fromscratch train` does (engine.trainer.Trainer,
    this process's rank under torchrun) in the fresh folder ``workdir(name)/run``, and a function making its
    loader (data.build.build_train_loader): ``loader(workers, start_iteration, iterations)``. Benchmarks time
    ``trainer.train_step``, the public step the training loop calls."""
    import shutil

    from fromscratch import comm
    from fromscratch.config import load_config
    from fromscratch.data.build import build_train_loader
    from fromscratch.engine.trainer import Trainer

    out = workdir(name) / "run"
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(config, list(overrides) + [f"output_dir={out}"])
    trainer = Trainer(cfg)

    def loader(workers: int, start: int, n: int):
        return build_train_loader(cfg, trainer.train_ds, start, start + n, comm.rank(), comm.world_size(), workers)

    return cfg, trainer, loader


class StageTimer:
    """Seconds of a training step by stage, measured from outside through torch's public hooks: forward
    (step start to the end of the model's forward), backward (to the optimizer's step), optimizer."""

    def __init__(self, module, optimizer) -> None:
        self.stages: dict[str, float] = {}
        self.tick = 0.0
        module.register_forward_hook(lambda *a: self._lap("forward"))
        optimizer.register_step_pre_hook(lambda *a: self._lap("backward"))
        optimizer.register_step_post_hook(lambda *a: self._lap("optimizer"))

    def start(self, stages: dict[str, float]) -> None:
        """Accumulate the next step's stages into ``stages``."""
        self.stages, self.tick = stages, time.perf_counter()

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.tick
        self.tick = now
