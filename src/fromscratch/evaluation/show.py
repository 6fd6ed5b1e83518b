"""`fromscratch data show`: a dataset's images drawn with their annotations (engine/inference.py draws
a trained model's detections)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fromscratch.data.loader import load_image
from fromscratch.data.records import Dataset, Record
from fromscratch.data.sources import load_dataset
from fromscratch.visualize import draw, grid, save_png


def skeleton_of(ds: Dataset) -> list:
    return next((c["skeleton"] for c in ds.categories if c.get("skeleton")), [])


def draw_record(r: Record, ds: Dataset) -> np.ndarray:
    masks = r.masks() if r.segmentations is not None else None
    return draw(load_image(r.file_name), r.boxes, r.labels, ds.class_names, masks=masks, keypoints=r.keypoints,
                skeleton=skeleton_of(ds), crowd=r.iscrowd)


def show_dataset(path: str, out: str, n: int = 16, ids: Sequence[int] | None = None, seed: int = 0,
                 cols: int = 4) -> int:
    """A grid of ``n`` images (seeded choice, or ``ids``) with their annotations; returns the count."""
    ds = load_dataset(path)
    if ids:
        records = ds.subset(ids).records
    else:
        order = np.random.default_rng(seed).permutation(len(ds.records))[:n]
        records = [ds.records[i] for i in sorted(order)]
    tiles = [draw_record(r, ds) for r in records]
    save_png(grid(tiles, cols, titles=[f"id {r.image_id}" for r in records]), out)
    return len(tiles)
