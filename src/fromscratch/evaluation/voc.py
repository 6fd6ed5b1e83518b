"""PASCAL VOC mAP: per-class AP at an IoU threshold, `difficult` objects ignored (neither true nor false
positives, not counted in recall), averaged over classes with objects.

Two AP integrations, as the VOC devkit: "area" (VOC2010 and later: the area under the precision
envelope) and "11point" (VOC2007: mean of the envelope at recall 0, 0.1, ..., 1). Boxes are our 0-based
xyxy, so the devkit's "+1" pixel-inclusive areas are plain areas here (data/voc.py subtracts 1 from xmin).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fromscratch.data.records import Dataset


def _iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], gts[:, 0])
    y0 = np.maximum(box[1], gts[:, 1])
    x1 = np.minimum(box[2], gts[:, 2])
    y1 = np.minimum(box[3], gts[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def average_precision(rec: np.ndarray, prec: np.ndarray, method: str = "area") -> float:
    if method == "11point":
        return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def class_ap(ds: Dataset, results: list[dict], label: int, cat_id: int, iou: float, method: str) -> float | None:
    """AP of one class; None when it has no non-difficult object."""
    gts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    npos = 0
    for r in ds.records:
        keep = r.labels == label
        diff = r.difficult[keep] if r.difficult is not None else np.zeros(int(keep.sum()), bool)
        gts[r.image_id] = (r.boxes[keep], diff)
        npos += int((~diff).sum())
    if npos == 0:
        return None
    dets = sorted((d for d in results if d["category_id"] == cat_id), key=lambda d: -d["score"])
    used = {iid: np.zeros(len(b), bool) for iid, (b, _) in gts.items()}
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for k, d in enumerate(dets):
        x, y, w, h = d["bbox"]
        boxes, diff = gts.get(d["image_id"], (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(boxes) == 0:
            fp[k] = 1
            continue
        ious = _iou(np.array([x, y, x + w, y + h]), boxes)
        j = int(ious.argmax())
        if ious[j] < iou:
            fp[k] = 1
        elif diff[j]:
            continue  # a detection of a difficult object counts for nothing
        elif not used[d["image_id"]][j]:
            tp[k], used[d["image_id"]][j] = 1, True
        else:
            fp[k] = 1  # a second detection of the same object
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    return average_precision(rec, prec, method)


def voc_map(ds: Dataset, results: list[dict], iou: float = 0.5, method: str = "area") -> dict[str, Any]:
    """mAP (in [0, 100]) and per-category AP, keyed by the dataset's category ids."""
    per = {}
    for label, cat_id in ds.label_to_cat_id.items():
        ap = class_ap(ds, results, label, cat_id, iou, method)
        if ap is not None:
            per[cat_id] = ap * 100
    return {"mAP": float(np.mean(list(per.values()))) if per else 0.0, "per_category": per}


def evaluate_voc(ds: Dataset, results: list[dict]) -> dict[str, Any]:
    """The numbers the trainer logs for a VOC dataset: AP50 (area), AP75, and VOC07's 11-point AP50."""
    m50 = voc_map(ds, results, 0.5, "area")
    return {"AP": m50["mAP"], "AP50": m50["mAP"], "AP75": voc_map(ds, results, 0.75, "area")["mAP"],
            "AP50_11point": voc_map(ds, results, 0.5, "11point")["mAP"], "per_category": m50["per_category"]}
