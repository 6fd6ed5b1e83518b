"""COCO AP recomputed on resampled validation sets, fast enough for a bootstrap.

pycocotools' ``evaluate`` matches detections to ground truth image by image (done once per run);
``accumulate`` then pools the images. This module keeps the per-image matches (area "all", the last
``maxDets``) and redoes the pooling with any multiset of images: image i counted ``w[i]`` times, its
detections repeated in place in the score order. With every weight 1 it gives pycocotools' AP, AP50
and AP75 exactly (tested); a resample costs a cumulative sum per category, not a new evaluation.
A paired bootstrap draws one image multiset and scores both arms on it (study/stats.py).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

REC_THRS = np.linspace(0.0, 1.00, 101)


@dataclass
class CategoryMatches:
    """One category's detections of all images, in pycocotools' pooled score order."""

    image: np.ndarray  # (D,) index into PerImageMatches.image_ids
    tp: np.ndarray  # (T, D) bool: matched and not ignored, at each IoU threshold
    fp: np.ndarray  # (T, D) bool: unmatched and not ignored
    num_gt: np.ndarray  # (N,) non-ignored ground truth per image


@dataclass
class PerImageMatches:
    iou_type: str
    image_ids: np.ndarray  # (N,)
    categories: list[CategoryMatches] = field(default_factory=list)


def match_per_image(gt: dict, results: list[dict], iou_type: str) -> PerImageMatches:
    """Run pycocotools' per-image matching once and keep what pooling needs."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from fromscratch.evaluation.coco import coco_eval_params

    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = {k: (list(v) if isinstance(v, list) else v) for k, v in gt.items()}
        gt_coco.createIndex()
        dt_coco = gt_coco.loadRes([dict(r) for r in results]) if results else COCO()
        ev = COCOeval(gt_coco, dt_coco, iou_type)
        coco_eval_params(ev, gt, iou_type)
        if results:
            ev.evaluate()
    p = ev.params
    ids = np.asarray(p.imgIds)
    out = PerImageMatches(iou_type, ids)
    n_img, n_area, max_det = len(ids), len(p.areaRng), p.maxDets[-1]
    for k in range(len(p.catIds)):
        evals = ev.evalImgs[k * n_area * n_img:(k * n_area + 1) * n_img] if results else [None] * n_img
        out.categories.append(_category(evals, gt_coco, p.catIds[k], ids, max_det, len(p.iouThrs)))
    return out


def _category(evals: list, gt_coco, cat_id: int, ids: np.ndarray, max_det: int, n_t: int) -> CategoryMatches:
    num_gt = np.zeros(len(ids), dtype=np.int64)
    scores, image, matched, ignored = [], [], [], []
    for i, e in enumerate(evals):
        if e is None:  # no detection of this category here; the GT still counts
            num_gt[i] = sum(1 for a in gt_coco.loadAnns(gt_coco.getAnnIds(imgIds=[int(ids[i])], catIds=[cat_id]))
                            if not a.get("iscrowd", 0) and not a.get("ignore", 0))
            continue
        num_gt[i] = int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
        d = len(e["dtScores"][:max_det])
        scores.append(np.asarray(e["dtScores"][:max_det]))
        image.append(np.full(d, i))
        matched.append(np.asarray(e["dtMatches"])[:, :d] != 0)
        ignored.append(np.asarray(e["dtIgnore"])[:, :d].astype(bool))
    if not scores:
        empty = np.zeros((n_t, 0), dtype=bool)
        return CategoryMatches(np.zeros(0, dtype=np.int64), empty, empty, num_gt)
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    m, ig = np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order]
    return CategoryMatches(np.concatenate(image)[order], m & ~ig, ~m & ~ig, num_gt)


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, npig: float) -> np.ndarray:
    """(T, R) interpolated precision, as pycocotools' accumulate."""
    tp_sum, fp_sum = np.cumsum(tp, axis=1, dtype=float), np.cumsum(fp, axis=1, dtype=float)
    out = np.zeros((tp.shape[0], len(REC_THRS)))
    if tp.shape[1] == 0:
        return out
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    for t in range(tp.shape[0]):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        ok = inds < pr.shape[1]
        out[t, ok] = pr[t, inds[ok]]
    return out


def ap_of(m: PerImageMatches, weights: np.ndarray | None = None) -> dict[str, float]:
    """AP, AP50, AP75 (in [0, 100]) with image i counted ``weights[i]`` times (all once by default)."""
    w = np.ones(len(m.image_ids), dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    per_cat = []
    for c in m.categories:
        npig = float((w * c.num_gt).sum())
        if npig == 0:
            continue  # pycocotools leaves such a category out (precision -1)
        idx = np.repeat(np.arange(len(c.image)), w[c.image])  # each detection once per copy of its image
        per_cat.append(_precision_at_recalls(c.tp[:, idx], c.fp[:, idx], npig).mean(axis=1))  # (T,)
    if not per_cat:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    t = np.stack(per_cat).mean(axis=0) * 100  # mean over categories, per IoU threshold
    return {"AP": float(t.mean()), "AP50": float(t[0]), "AP75": float(t[5])}


def resample_weights(n: int, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n) multiplicities of n images drawn with replacement (one row per bootstrap round)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(rounds)])
