"""Checkpoints written atomically and resumed exactly.

A checkpoint holds the model, the optimizer, the iteration, the schedule it was made under, the
samples seen, and every RNG state (python, numpy, torch). The loader needs no state of its own: the
batch of iteration i and its augmentation are a function of (seed, i) (data/loader.py), so resuming
at i sees exactly the batches an uninterrupted run would. Files are written to a temp name and
renamed (utils.atomic_write_bytes): a run killed mid-write leaves only a ``.tmp`` that is never read.
"""
from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fromscratch.engine.logging import read_metrics_lines
from fromscratch.errors import FromScratchError
from fromscratch.utils import atomic_write_bytes, atomic_write_text, load_weights_only

PATTERN = re.compile(r"^model_(\d{7})\.pth$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                                   *np_state[2:]], "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy(), *npst[2:]))
    torch.set_rng_state(state["torch"])


def checkpoint_path(out_dir: Path, iteration: int) -> Path:
    return Path(out_dir) / f"model_{iteration:07d}.pth"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue(), "checkpoint")


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temp files never match)."""
    d = Path(out_dir)
    return sorted(p for p in d.glob("model_*.pth") if PATTERN.match(p.name)) if d.is_dir() else []


TRAINING_KEYS = ("model", "optimizer", "iteration", "samples", "rng")


def load_newest(out_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[tuple[Path, str]]]:
    """(path, contents) of the newest training checkpoint of a run folder that loads, and (path,
    reason) of each newer one that does not (truncated, corrupted, not a training checkpoint)."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = load_checkpoint(path)
        except FromScratchError as e:
            skipped.append((path, str(e)))
            continue
        missing = [k for k in TRAINING_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            skipped.append((path, f"not a training checkpoint: no {', '.join(missing)}"))
            continue
        return path, state, skipped
    return None, None, skipped


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (read by utils.load_weights_only: a file that carries code is refused)."""
    return load_weights_only(Path(path), "checkpoint")


def prune(out_dir: Path, keep: int, protect: set[Path] | None = None) -> None:
    """Keep the newest ``keep`` checkpoints (and any in ``protect``, e.g. the best by val AP)."""
    protect = protect or set()
    ckpts = list_checkpoints(out_dir)
    for p in ckpts[:-keep] if keep > 0 else []:
        if p not in protect:
            p.unlink(missing_ok=True)


def truncate_metrics(path: Path, iteration: int, writer: bool = True) -> None:
    """Drop the metrics.jsonl lines a killed run logged after its last checkpoint (they will be logged
    again when it resumes); ``writer``: this process writes the run's files (rank 0)."""
    if not path.exists() or not writer:
        return
    keep = [ln for ln in read_metrics_lines(path) if ln["iteration"] <= iteration]
    atomic_write_text(path, "".join(json.dumps(ln) + "\n" for ln in keep), "metrics file")
