"""Test-time augmentation as Detectron does it: several test scales (400-1200) and horizontal flips;
boxes of all augmentations merged by per-class NMS, then box voting (each kept box becomes the
score-weighted mean of the boxes of its class overlapping it by IoU >= 0.8); masks computed for the
final boxes under every augmentation and their soft masks averaged before pasting (Detectron's
``test_time_augmentation`` with ``BBOX_VOTE`` and ``MASK_AUG``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image
from torchvision.ops import boxes as box_ops

VOTE_IOU = 0.8


@dataclass(frozen=True)
class TTASpec:
    scales: list[int]
    flip: bool
    max_size: int  # at test_scale; scaled with each test scale
    test_scale: int


def tta_spec(cfg: Any) -> TTASpec | None:
    """The config's test-time augmentation, or None when eval.tta is off."""
    if not cfg.eval.tta:
        return None
    return TTASpec(list(cfg.eval.tta_scales), cfg.eval.tta_flip, cfg.data.max_size, cfg.data.test_scale)


def _flip_boxes(b: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)


def vote(kept: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
         all_labels: torch.Tensor) -> torch.Tensor:
    """Each kept box -> score-weighted mean of same-class boxes with IoU >= 0.8 to it."""
    out = kept.clone()
    for i in range(len(kept)):
        same = all_labels == labels[i]
        iou = box_ops.box_iou(kept[i:i + 1], boxes[same])[0]
        sel = iou >= VOTE_IOU
        if sel.any():
            w = scores[same][sel][:, None]
            out[i] = (boxes[same][sel] * w).sum(0) / w.sum()
    return out


class _Scale:
    """Temporarily set the model's test scale (and a max size that lets it take effect)."""

    def __init__(self, model: nn.Module, short: int, max_size: int):
        self.t, self.short, self.max_size = model.transform, short, max_size

    def __enter__(self) -> None:
        self.saved = (self.t.min_size, self.t.max_size)
        self.t.min_size, self.t.max_size = (self.short,), self.max_size

    def __exit__(self, *exc: object) -> None:
        self.t.min_size, self.t.max_size = self.saved


@torch.no_grad()
def tta_predict(model: nn.Module, image: torch.Tensor, spec: TTASpec) -> dict[str, torch.Tensor]:
    """Detections for one image (3, H, W float in [0, 1]) in original coordinates."""
    h, w = image.shape[-2:]
    rh = model.roi_heads
    max_size, test_scale = spec.max_size, spec.test_scale
    augs = [(s, f) for s in spec.scales for f in ([False, True] if spec.flip else [False])]
    boxes, scores, labels = [], [], []
    for s, f in augs:
        with _Scale(model, s, int(max_size * s / test_scale)):
            out = model([image.flip(-1) if f else image])[0]
        boxes.append(_flip_boxes(out["boxes"], w) if f else out["boxes"])
        scores.append(out["scores"])
        labels.append(out["labels"])
    b, sc, lb = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = box_ops.batched_nms(b, sc, lb, rh.nms_thresh)[: rh.detections_per_img]
    result = {"boxes": vote(b[keep], lb[keep], b, sc, lb), "scores": sc[keep], "labels": lb[keep]}
    if getattr(rh, "mask_head", None) is not None:
        result["masks"] = _averaged_masks(model, image, result, augs, max_size, test_scale)
    return result


def _averaged_masks(model: nn.Module, image: torch.Tensor, det: dict, augs: list, max_size: int,
                    test_scale: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    rh = model.roi_heads
    if len(det["boxes"]) == 0:
        return torch.zeros(0, 1, h, w)
    total = None
    for s, f in augs:
        with _Scale(model, s, int(max_size * s / test_scale)):
            images, _ = model.transform([image.flip(-1) if f else image])
        feats = model.backbone(images.tensors)
        if isinstance(feats, torch.Tensor):
            feats = {"0": feats}
        rh_, rw_ = images.image_sizes[0]
        boxes = _flip_boxes(det["boxes"], w) if f else det["boxes"]
        boxes = boxes * torch.tensor([rw_ / w, rh_ / h, rw_ / w, rh_ / h])
        logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(feats, [boxes], images.image_sizes)))
        probs = maskrcnn_inference(logits, [det["labels"]])[0]
        probs = probs.flip(-1) if f else probs
        total = probs if total is None else total + probs
    return paste_masks_in_image(total / len(augs), det["boxes"], (h, w))
