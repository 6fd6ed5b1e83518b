"""COCO AP (bbox, segm, keypoints): the 12 summary numbers and per-category AP.

Backends: faster-coco-eval (the C++ port, default: 3-9x faster here, docs/paper.md, Measured on our machine kind) and
pycocotools, the reference (``eval.backend=pycocotools``). Both take the same ground-truth dict and
the same results list, and tests check that they agree. Results are a standard COCO results json
(what pycocotools, detectron2 and mmdetection tools read).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
KP_STAT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def _backend(name: str) -> tuple[Any, Any]:
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    from faster_coco_eval import COCO, COCOeval_faster

    return COCO, COCOeval_faster


def _records(items: list[dict]) -> list[dict]:
    """Copies the evaluators may annotate (``area``, ``id``, ``ignore`` ...) without touching the caller's
    dicts; one level deeper for RLE dicts. A deep copy costs more than the evaluation itself (benchmarks/eval.py)."""
    out = []
    for d in items:
        d = dict(d)
        if isinstance(d.get("segmentation"), dict):
            d["segmentation"] = dict(d["segmentation"])
        out.append(d)
    return out


def _coco_from_dict(cls: Any, gt: dict) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = cls()
        coco.dataset = {k: (_records(v) if isinstance(v, list) else copy.deepcopy(v)) for k, v in gt.items()}
        coco.createIndex()
    return coco


def per_category_ap(precision: np.ndarray, cat_ids: list[int]) -> dict[int, float]:
    """AP per category: precision[T, R, K, A, M] averaged over IoUs and recalls, area all, max dets."""
    out = {}
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cid)] = float(p.mean()) if p.size else float("nan")
    return out


def coco_eval_params(ev: Any, gt: dict, iou_type: str) -> None:
    """Our settings on a COCOeval of either backend: keypoint sigmas for other than COCO's 17 points."""
    if iou_type == "keypoints":
        num = max((len(c.get("keypoints") or []) for c in gt["categories"]), default=17)
        if num != 17:  # COCO's sigmas are for its 17 person keypoints; others use a uniform 0.05
            ev.params.kpt_oks_sigmas = np.full(num, 0.05)


def evaluate(gt: dict, results: list[dict], iou_type: str, backend: str = "faster_coco_eval") -> dict[str, Any]:
    """COCO evaluation of ``results`` against the ground-truth dict ``gt`` for one IoU type.

    Returns {"AP": ..., "AP50": ..., (12 or 10 stats, AP in [0, 100]), "per_category": {cat_id: AP}}.
    """
    names = KP_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
    if not results:
        return {n: 0.0 for n in names} | {"per_category": {}}
    coco_cls, eval_cls = _backend(backend)
    gt_coco = _coco_from_dict(coco_cls, gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt_coco = gt_coco.loadRes(_records(results))
        ev = eval_cls(gt_coco, dt_coco, iou_type)
        coco_eval_params(ev, gt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) * 100 for s in ev.stats[:len(names)]]
    out: dict[str, Any] = dict(zip(names, stats))
    out["per_category"] = per_category_ap(np.asarray(ev.eval["precision"]) * 100, list(ev.params.catIds))
    return out
