"""Run a detector over records and turn its outputs into COCO results (file's own category ids).

Each process predicts its shard of the images; the results are gathered on every rank (comm.py) and
rank 0 scores them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fromscratch import comm
from fromscratch.config import has_masks
from fromscratch.data.loader import eval_loader
from fromscratch.data.masks import encode_mask
from fromscratch.data.records import Dataset
from fromscratch.evaluation.coco import evaluate
from fromscratch.evaluation.tta import TTASpec, tta_predict


def outputs_to_results(out: dict[str, torch.Tensor], image_id: int, label_to_cat: dict[int, int]) -> list[dict]:
    boxes = out["boxes"].float().cpu().numpy()
    scores = out["scores"].float().cpu().numpy()
    labels = out["labels"].cpu().numpy()
    masks = (out["masks"][:, 0] > 0.5).cpu().numpy() if "masks" in out else None
    kps = out["keypoints"].float().cpu().numpy() if "keypoints" in out else None
    res = []
    for i in range(len(scores)):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        r: dict[str, Any] = {"image_id": int(image_id), "category_id": label_to_cat[int(labels[i])],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i])}
        if masks is not None:
            r["segmentation"] = encode_mask(masks[i])
        if kps is not None:
            k = kps[i].copy()
            k[:, 2] = 1  # COCO results carry a visibility flag; the score is the detection's
            r["keypoints"] = [float(v) for v in k.reshape(-1)]
        res.append(r)
    return res


@torch.no_grad()
def predict(model: nn.Module, ds: Dataset, device: torch.device, num_workers: int = 2,
            max_images: int | None = None, tta: TTASpec | None = None) -> list[dict]:
    """COCO results for every image of ``ds`` (all processes' shards, gathered on every rank), with
    test-time augmentation when ``tta`` is given (eval.tta)."""
    was = model.training
    model.eval()
    records = ds.records[:max_images] if max_images else ds.records
    l2c = ds.label_to_cat_id
    mine: list[dict] = []
    for images, ids in eval_loader(records, num_workers, comm.rank(), comm.world_size()):
        batch = [im.to(device).float().div_(255) for im in images]
        if tta is not None:
            outs = [tta_predict(model, im, tta) for im in batch]
        else:
            outs = model(batch)
        for out, iid in zip(outs, ids):
            mine += outputs_to_results(out, iid, l2c)
    model.train(was)
    return [r for part in comm.gather_objects(mine) for r in part]


def iou_types_for(ds: Dataset, meta_arch: str) -> list[str]:
    if any(r.difficult is not None for r in ds.records):  # read from VOC XML: VOC mAP
        return ["voc"]
    types = ["bbox"]
    if has_masks(meta_arch) and ds.has_masks:
        types.append("segm")
    if meta_arch == "keypoint_rcnn" and ds.has_keypoints:
        types.append("keypoints")
    return types


def evaluate_dataset(ds: Dataset, results: list[dict], meta_arch: str, backend: str) -> dict[str, Any]:
    """{iou type: metrics}: COCO AP for bbox/segm/keypoints, or VOC mAP for a VOC dataset."""
    types = iou_types_for(ds, meta_arch)
    if types == ["voc"]:
        from fromscratch.evaluation.voc import evaluate_voc

        return {"voc": evaluate_voc(ds, results)}
    from fromscratch.data.coco import dataset_to_coco

    gt = dataset_to_coco(ds)
    return {t: evaluate(gt, results, t, backend) for t in types}


def ap_table(metrics: dict[str, Any]) -> str:
    """A small text table of the main numbers per IoU type."""
    lines = [f"{'':10s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}"]
    for t, m in metrics.items():
        lines.append(f"{t:10s} {m['AP']:6.2f} {m['AP50']:6.2f} {m['AP75']:6.2f}")
    return "\n".join(lines)

