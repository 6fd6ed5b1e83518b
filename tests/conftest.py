"""Shared fixtures: a tiny COCO dataset written to disk (real PNGs, every segmentation form)."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FROMSCRATCH_DATA", ROOT / "data"))

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye"]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root: Path, num_images: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0,
              keypoints: bool = True) -> Path:
    """Write images/ and ann.json under root: polygons, compressed and uncompressed RLE, crowd, keypoints."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    W, H = size
    images, anns = [], []
    aid = 100
    for i in range(num_images):
        w, h = (W, H) if i % 2 == 0 else (H, W)
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        name = f"images/img{i}.png"
        Image.fromarray(arr).save(root / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        # polygon: a rectangle
        anns.append({"id": aid, "image_id": i + 1, "category_id": 3, "bbox": [2, 3, 10, 8], "iscrowd": 0,
                     "area": 80.0, "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]],
                     **({"keypoints": [5, 5, 2, 4, 4, 1, 0, 0, 0], "num_keypoints": 2} if keypoints else {})})
        m = np.zeros((h, w), dtype=np.uint8)
        m[20:30, 15:25] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": aid + 1, "image_id": i + 1, "category_id": 7, "bbox": [15, 20, 10, 10], "iscrowd": 0,
                     "area": 100.0, "segmentation": rle,
                     **({"keypoints": [16, 21, 2, 18, 22, 2, 20, 23, 2], "num_keypoints": 3} if keypoints else {})})
        m2 = np.zeros((h, w), dtype=np.uint8)
        m2[0:5, 30:40] = 1
        anns.append({"id": aid + 2, "image_id": i + 1, "category_id": 3, "bbox": [30, 0, 10, 5], "iscrowd": 1,
                     "area": 50.0, "segmentation": _uncompressed_rle(m2),
                     **({"keypoints": [0] * 9, "num_keypoints": 0} if keypoints else {})})
        aid += 3
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    if keypoints:
        for c in cats:
            c["keypoints"] = KEYPOINT_NAMES
            c["skeleton"] = [[1, 2], [1, 3]]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def coco_path(tmp_path: Path) -> Path:
    return make_coco(tmp_path)


def prepared(name: str, file: str = "train.json") -> Path:
    """An embedded dataset prepared by `make data` (make test prepares them first)."""
    path = DATA / name / file
    if not path.exists():
        pytest.fail(f"{path} missing: run `make data` (make test does it) before the tests")
    return path


@functools.cache  # the config tests ask for every config's several times
def what_trains(path: Path) -> str:
    """What a 2-iteration training of a config exercises beyond its schedule: the model (trunk, norms, heads,
    weights), the augmentation and the AMP mode; configs that differ in their schedule only share it."""
    from fromscratch.config import load_config

    cfg = load_config(path)
    return json.dumps([cfg.model.model_dump(), cfg.data.augmentation, cfg.train.amp], sort_keys=True, default=str)


def one_per_model(paths: list[Path]) -> list[Path]:
    """The first of ``paths`` for each distinct ``what_trains``: the configs a model-building test trains."""
    seen: dict[str, Path] = {}
    for p in paths:
        seen.setdefault(what_trains(p), p)
    return list(seen.values())
