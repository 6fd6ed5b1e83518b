"""Shared by the benchmarks: machine facts, a peak-memory sampler, markdown tables, a scratch folder.

Every benchmark prints one markdown section (a title, a table, a line per target: met or the measured
gap) so `make bench` (benchmarks/run_all.py) can put them together in benchmarks/RESULTS.md.
"""
from __future__ import annotations

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

    def __enter__(self) -> "PeakRSS":
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
