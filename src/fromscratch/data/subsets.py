"""Seeded subsets written as image-id lists (the paper's 35k / 10k / 3.5k / 1k COCO subsets).

Training reads a subset only from such a file, never by sampling at start-up, so every process of a
distributed run sees the same images by construction (a per-rank random subset inflated a peer's AP:
unbiased-teacher #14). With one seed, subsets of different sizes are **nested**: the ids are a seeded
permutation of all ids and a subset of size N is its first N, so the 1k subset lies inside the 3.5k.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fromscratch.errors import DataError
from fromscratch.utils import atomic_write_text


def choose_subset(image_ids: list[int], size: int, seed: int) -> list[int]:
    """The first ``size`` ids of a permutation seeded by ``seed`` (sorted; nested across sizes)."""
    ids = sorted(int(i) for i in image_ids)
    if size > len(ids):
        raise DataError(f"subset of {size} images asked for, but the dataset has only {len(ids)}")
    if size <= 0:
        raise DataError(f"subset size must be positive, got {size}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:size])


def write_subset(path: str | Path, ids: list[int], dataset: str, seed: int) -> None:
    payload = {"dataset": str(dataset), "size": len(ids), "seed": seed, "image_ids": list(ids)}
    atomic_write_text(Path(path), json.dumps(payload, indent=0))


def read_subset(path: str | Path) -> list[int]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: subset file not found (make one with `fromscratch data subset`)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    ids = data.get("image_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise DataError(f"{path}: field 'image_ids' must be a list of integers")
    return ids


def default_subset_path(dataset: str | Path, size: int, seed: int) -> Path:
    dataset = Path(dataset)
    return dataset.parent / "subsets" / f"{dataset.stem}_{size}_seed{seed}.json"
