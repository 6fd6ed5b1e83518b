"""COCO instances / keypoints json <-> records.

Boxes go from COCO's xywh to xyxy float32 (torchvision's convention); category ids become
contiguous labels 1..C in the file's category order, and ``write_coco`` maps them back, so a
dataset survives the round trip COCO -> records -> COCO unchanged.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fromscratch.data.records import Dataset, Record
from fromscratch.data.validate import Problem, check_coco_dict, format_problems, image_root_for, resolve_image_path
from fromscratch.errors import DataError


def read_json(path: str | Path) -> Any:
    """Parse a json file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None


def load_coco(path: str | Path, image_root: str | None = None, on_invalid: str = "error",
              check_images: bool = True, allow_outside_root: bool = False) -> Dataset:
    """Read and check a COCO json. ``on_invalid="skip"`` drops bad annotations/images and warns."""
    path = str(path)
    data = read_json(path)
    root = image_root_for(path, image_root)
    problems = check_coco_dict(path, data, root, allow_outside_root, check_images)
    if problems:
        fatal = [p for p in problems if p.image_id is None and p.ann_id is None]
        if on_invalid != "skip" or fatal:
            raise DataError(f"{len(problems)} problem(s) in {path} (fix them, or set data.on_invalid=skip "
                            f"to drop the bad images/annotations):\n{format_problems(problems)}")
        data = _drop(data, problems)
        warnings.warn(f"{path}: dropped {len(problems)} invalid image(s)/annotation(s) (data.on_invalid=skip)")
    return coco_to_dataset(data, path, root, allow_outside_root)


def _drop(data: dict, problems: list[Problem]) -> dict:
    bad_images = {p.image_id for p in problems if p.image_id is not None}
    bad_anns = {p.ann_id for p in problems if p.ann_id is not None}
    out = dict(data)
    out["images"] = [i for i in data["images"] if i.get("id") not in bad_images]
    out["annotations"] = [a for a in data["annotations"]
                          if a.get("id") not in bad_anns and a.get("image_id") not in bad_images]
    return out


def coco_to_dataset(data: dict, source: str, root: str, allow_outside_root: bool = False) -> Dataset:
    cats = list(data["categories"])
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    num_kp = max((len(c.get("keypoints") or []) for c in cats), default=0)
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    for img in data["images"]:
        anns = by_image.get(img["id"], [])
        records.append(_record(img, anns, root, cat_to_label, num_kp, allow_outside_root))
    info = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return Dataset(records, cats, source, root, info)


def _record(img: dict, anns: list[dict], root: str, cat_to_label: dict, num_kp: int, allow_outside: bool) -> Record:
    n = len(anns)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i, a in enumerate(anns):
        x, y, w, h = a["bbox"]
        boxes[i] = (x, y, x + w, y + h)
    labels = np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
    iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    has_seg = any(a.get("segmentation") not in (None, []) for a in anns)
    segs = [a.get("segmentation") or None for a in anns] if has_seg else None
    kps = None
    if num_kp and any(a.get("keypoints") for a in anns):
        kps = np.zeros((n, num_kp, 3), dtype=np.float32)
        for i, a in enumerate(anns):
            if a.get("keypoints"):
                kps[i] = np.asarray(a["keypoints"], dtype=np.float32).reshape(-1, 3)
    path, _ = resolve_image_path(root, img["file_name"], allow_outside)
    return Record(image_id=int(img["id"]), file_name=path, width=int(img["width"]), height=int(img["height"]),
                  boxes=boxes.reshape(-1, 4), labels=labels, iscrowd=iscrowd, ann_ids=[int(a["id"]) for a in anns],
                  segmentations=segs, keypoints=kps, file_ref=img["file_name"])


def dataset_to_coco(ds: Dataset) -> dict:
    """Records -> a COCO dict with the original category ids (the inverse of ``coco_to_dataset``)."""
    l2c = ds.label_to_cat_id
    images, anns = [], []
    next_id = 1 + max((a for r in ds.records for a in r.ann_ids), default=0)
    for r in ds.records:
        images.append({"id": r.image_id, "file_name": r.file_ref or r.file_name, "width": r.width, "height": r.height})
        for i in range(r.num_instances):
            x0, y0, x1, y1 = (float(v) for v in r.boxes[i])
            if i < len(r.ann_ids):
                aid = r.ann_ids[i]
            else:
                aid, next_id = next_id, next_id + 1
            ann: dict[str, Any] = {"id": aid, "image_id": r.image_id, "category_id": l2c[int(r.labels[i])],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(r.iscrowd[i])}
            if r.segmentations is not None and r.segmentations[i] is not None:
                ann["segmentation"] = r.segmentations[i]
                ann["area"] = _seg_area(r.segmentations[i], r.height, r.width)
            else:
                ann["area"] = (x1 - x0) * (y1 - y0)
            if r.keypoints is not None:
                ann["keypoints"] = [float(v) for v in r.keypoints[i].reshape(-1)]
                ann["num_keypoints"] = int((r.keypoints[i][:, 2] > 0).sum())
            anns.append(ann)
    out = dict(ds.info)
    out.update({"images": images, "annotations": anns, "categories": ds.categories})
    return out


def _seg_area(seg: Any, h: int, w: int) -> float:
    from pycocotools import mask as mask_utils

    from fromscratch.data.masks import to_rle

    return float(mask_utils.area(to_rle(seg, h, w)))


def write_coco(ds: Dataset, path: str | Path) -> None:
    """Write records as COCO json, atomically (temp file + rename)."""
    from fromscratch.utils import atomic_write_text

    atomic_write_text(Path(path), json.dumps(dataset_to_coco(ds)))
