"""metrics.jsonl, TensorBoard and a tqdm bar, written by rank 0 only.

Train lines average the losses over the ``log_period`` window (detectron2 logs window medians);
eval lines carry every AP number. Both carry the samples seen so far (images, instances, pixels).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fromscratch.errors import FromScratchError
from fromscratch.utils import append_line

logger = logging.getLogger(__name__)


def read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a metrics.jsonl. A torn last line (a write cut off by a kill or a full disk, before
    this project's writer cut such writes back) is skipped and named; a bad line anywhere else is a
    ``FromScratchError`` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    rows = text.splitlines()
    out = []
    for n, row in enumerate(rows, 1):
        if not row.strip():
            continue
        try:
            obj = json.loads(row)
            if not isinstance(obj, dict) or "type" not in obj or "iteration" not in obj:
                raise ValueError("not a metrics line (needs 'type' and 'iteration')")
        except ValueError as e:
            if n == len(rows) and not text.endswith("\n"):
                logger.warning(f"{path}: line {n} is torn (a write was cut off; {len(row)} characters, no end of "
                               "line): skipped")
                continue
            raise FromScratchError(f"{path}: line {n} is not a metrics line ({e}): {row[:80]!r}") from None
        out.append(obj)
    return out


class MetricLogger:
    def __init__(self, out: Path, total: int, start: int, enabled: bool = True, period: int = 20):
        self.enabled, self.period, self.out = enabled, max(1, period), out
        self.window: list[dict[str, float]] = []
        self.times: list[tuple[float, float, int]] = []
        self.path = out / "metrics.jsonl"
        self.file = open(self.path, "ab", buffering=0) if enabled else None  # whole lines only: append_line
        self.bar = tqdm(total=total, initial=start, disable=not enabled or None, dynamic_ncols=True, desc="train")
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out))
            except ImportError:  # tensorboard is a dependency; a broken install must not cost the run
                self.tb = None

    def _write(self, obj: dict[str, Any]) -> None:
        assert self.file is not None
        append_line(self.file, self.path, json.dumps(obj), "metrics line")

    def step(self, iteration: int, losses: dict[str, float], lr: float, step_time: float, data_time: float,
             batch: int, samples: dict[str, int], last: bool = False) -> None:
        """One iteration; a line every ``period`` iterations and at the ``last`` one (the end, or a stop)."""
        if not self.enabled:
            return
        self.window.append(losses)
        self.times.append((step_time, data_time, batch))
        total = sum(losses.values())
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2g}")
        if iteration % self.period and iteration != self.bar.total and not last:
            return
        mean = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[-1]}
        st = sum(t for t, _, _ in self.times)
        line = {"type": "train", "iteration": iteration, "loss": sum(mean.values()), **mean, "lr": lr,
                "time": st / len(self.times), "data_time": sum(d for _, d, _ in self.times) / len(self.times),
                "images_per_s": sum(b for _, _, b in self.times) / max(st, 1e-9), "samples_seen": dict(samples)}
        self._write(line)
        if self.tb:
            for k in ("loss", *mean, "lr", "images_per_s"):
                self.tb.add_scalar(f"train/{k}", line[k], iteration)
        self.window.clear()
        self.times.clear()

    def eval(self, iteration: int, metrics: dict[str, Any], samples: dict[str, int]) -> None:
        if not self.enabled or not metrics:
            return
        self._write({"type": "eval", "iteration": iteration, **metrics, "samples_seen": dict(samples)})
        if self.tb:
            for t, m in metrics.items():
                for k in ("AP", "AP50", "AP75"):
                    self.tb.add_scalar(f"eval/{t}/{k}", m[k], iteration)
        self.bar.write(f"iteration {iteration}: " + ", ".join(f"{t} AP {m['AP']:.2f}" for t, m in metrics.items()))

    def event(self, obj: dict[str, Any]) -> None:
        """A line of its own in metrics.jsonl (e.g. an early stop), with its ``type``."""
        if self.enabled:
            self._write(obj)
            self.bar.write(f"iteration {obj.get('iteration')}: {obj.get('type')}")

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            assert self.file is not None
            self.file.close()
            if self.tb:
                self.tb.close()
