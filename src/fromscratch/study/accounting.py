"""Samples seen, the paper's Fig. 2 accounting: images, instances and pixels, pre-training included.

One image seen for 100 epochs counts 100 image-level samples; likewise instances and pixels. A
pre-trained arm starts with the samples of its pre-training: our stage's own count
(``pretrain/accounting.json``), or, for weights we did not train, the published ImageNet recipe
(1.28M images x 100 epochs at 224 px), marked as an estimate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fromscratch.engine.logging import read_metrics_lines
from fromscratch.study.pretrain import IMAGENET_RECIPE

KINDS = ("images", "instances", "pixels")


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train lines, eval lines) of a run folder's metrics.jsonl."""
    lines = read_metrics_lines(run_dir / "metrics.jsonl")
    return [x for x in lines if x["type"] == "train"], [x for x in lines if x["type"] == "eval"]


def pretrain_samples(weights: str | None, study_dir: Path, arm: str = "") -> dict[str, Any]:
    """What the arm's initialization cost in samples (zeros from scratch): its stage's own count (the
    shared supervised stage, or the arm's SSL stage), or the published ImageNet recipe."""
    if weights is None:
        return {"images": 0, "instances": 0, "pixels": 0, "estimate": False, "source": "none"}
    if weights in ("stage", "ssl"):
        path = study_dir / ("pretrain" if weights == "stage" else f"pretrain_{arm}") / "accounting.json"
        if not path.exists():
            return {"images": 0, "instances": 0, "pixels": 0, "estimate": False, "source": "stage (not run yet)"}
        acct = json.loads(path.read_text())
        return {k: acct[k] for k in (*KINDS, "estimate", "source")}
    return dict(IMAGENET_RECIPE)


def total_samples(seen: dict[str, int], pre: dict[str, Any]) -> dict[str, float]:
    return {k: float(seen.get(k, 0)) + float(pre.get(k, 0)) for k in KINDS}


def fmt(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"
