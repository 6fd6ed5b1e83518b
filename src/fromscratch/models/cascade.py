"""Cascade R-CNN RoI heads (Cai & Vasconcelos 2018): 3 box stages at IoU 0.5 / 0.6 / 0.7, each refining
the (detached) boxes of the previous one; mask head on the last stage.

Follows detectron2's CascadeROIHeads where the papers leave choices: class-agnostic box regression,
regression weights (10,10,5,5) / (20,20,10,10) / (30,30,15,15), ground truth added to the proposals of
stage 1 only, no sub-sampling in later stages, test scores averaged over the stages, boxes from the last
one. Stage loss weights 1 / 0.5 / 0.25 as in the Cascade paper (and mmdetection). ``active_stages``
lets a model train as a one-stage Mask R-CNN and switch to the cascade for the final iterations, as
the paper does for its Cascade row of Table 3 (``model.cascade_from_iter``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class AgnosticPredictor(nn.Module):
    """Class scores (C+1) and one class-agnostic box delta per RoI."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """Stage 1 is ``box_head`` / ``box_predictor`` (torchvision's matching and sampling); stages 2+ are
    ``extra_heads`` / ``extra_predictors``."""

    def __init__(self, heads: list[nn.Module], predictors: list[nn.Module], ious: list[float],
                 stage_weights: list[float], **kwargs: Any):
        super().__init__(box_head=heads[0], box_predictor=predictors[0], fg_iou_thresh=ious[0],
                         bg_iou_thresh=ious[0], bbox_reg_weights=REG_WEIGHTS[0], **kwargs)
        self.extra_heads = nn.ModuleList(heads[1:])
        self.extra_predictors = nn.ModuleList(predictors[1:])
        self.matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False) for iou in ious]
        self.coders = [det_utils.BoxCoder(w) for w in REG_WEIGHTS[:len(ious)]]
        self.stage_weights = list(stage_weights)
        self.active_stages = len(heads)

    def stage(self, k: int) -> tuple[nn.Module, nn.Module]:
        if k == 0:
            return self.box_head, self.box_predictor
        return self.extra_heads[k - 1], self.extra_predictors[k - 1]

    def _label(self, k: int, proposals: list[torch.Tensor], targets: list[dict]) -> tuple[list, list, list]:
        """Stage k >= 1: match refined boxes to ground truth at this stage's IoU, no sampling."""
        matched, labels, reg = [], [], []
        for p, t in zip(proposals, targets):
            if len(t["boxes"]) == 0:
                idx = torch.zeros(len(p), dtype=torch.int64, device=p.device)
                lab = torch.zeros(len(p), dtype=torch.int64, device=p.device)
                gt = torch.zeros_like(p)
            else:
                m = self.matchers[k](box_ops.box_iou(t["boxes"], p))
                idx = m.clamp(min=0)
                lab = t["labels"][idx].clone()
                lab[m < 0] = 0
                gt = t["boxes"][idx]
            matched.append(idx)
            labels.append(lab)
            reg.append(self.coders[k].encode_single(gt, p))
        return matched, labels, reg

    def _loss(self, k: int, logits: torch.Tensor, deltas: torch.Tensor, labels: list,
              reg: list) -> dict[str, torch.Tensor]:
        lab, tgt = torch.cat(labels), torch.cat(reg)
        pos = lab > 0
        box = F.smooth_l1_loss(deltas[pos], tgt[pos], beta=1 / 9, reduction="sum") / max(1, lab.numel())
        w = self.stage_weights[k]
        return {f"loss_classifier_s{k + 1}": w * F.cross_entropy(logits, lab), f"loss_box_reg_s{k + 1}": w * box}

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict] | None = None) -> tuple[list[dict], dict]:
        losses: dict[str, torch.Tensor] = {}
        matched = labels = None
        probs = []
        for k in range(self.active_stages):
            if self.training:
                assert targets is not None
                if k == 0:
                    proposals, matched, labels, reg = self.select_training_samples(proposals, targets)
                else:
                    matched, labels, reg = self._label(k, proposals, targets)
            head, predictor = self.stage(k)
            logits, deltas = predictor(head(self.box_roi_pool(features, proposals, image_shapes)))
            if self.training:
                losses.update(self._loss(k, logits, deltas, labels, reg))
            probs.append(F.softmax(logits, -1))
            # the next stage's inputs (at test, the final boxes); in training the last stage keeps its
            # inputs, which the mask branch's labels refer to
            if k + 1 < self.active_stages or not self.training:
                sizes = [len(p) for p in proposals]
                boxes = self.coders[k].decode(deltas.detach(), proposals).reshape(-1, 4)
                proposals = [box_ops.clip_boxes_to_image(b, s) for b, s in zip(boxes.split(sizes), image_shapes)]
        result: list[dict] = []
        if not self.training:
            scores = torch.stack(probs).mean(0)
            result = self._detections(proposals, scores, image_shapes)
        if self.has_mask():
            losses.update(self._masks(features, proposals, image_shapes, targets, matched, labels, result))
        return result, losses

    def _detections(self, boxes: list[torch.Tensor], scores: torch.Tensor, shapes: list) -> list[dict]:
        out = []
        for b, s in zip(boxes, scores.split([len(x) for x in boxes])):
            c = s.shape[1] - 1
            bb = b[:, None].expand(-1, c, 4).reshape(-1, 4)
            ss = s[:, 1:].reshape(-1)
            ll = torch.arange(1, c + 1, device=b.device).repeat(len(b))
            keep = torch.nonzero(ss > self.score_thresh).squeeze(1)
            bb, ss, ll = bb[keep], ss[keep], ll[keep]
            keep = box_ops.remove_small_boxes(bb, 1e-2)
            bb, ss, ll = bb[keep], ss[keep], ll[keep]
            keep = box_ops.batched_nms(bb, ss, ll, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": bb[keep], "scores": ss[keep], "labels": ll[keep]})
        return out

    def _masks(self, features: dict, proposals: list, shapes: list, targets: list | None, matched: list | None,
               labels: list | None, result: list[dict]) -> dict[str, torch.Tensor]:
        """The mask head on the last stage: its positive boxes in training, the detections at test."""
        if self.training:
            assert targets is not None and matched is not None and labels is not None
            pos = [torch.nonzero(lab > 0).squeeze(1) for lab in labels]
            rois = [p[i] for p, i in zip(proposals, pos)]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, shapes)))
            gt_labels = [t["labels"] for t in targets]
            return {"loss_mask": maskrcnn_loss(logits, rois, [t["masks"] for t in targets], gt_labels,
                                               [m[i] for m, i in zip(matched, pos)])}
        rois = [r["boxes"] for r in result]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, shapes)))
        for prob, r in zip(maskrcnn_inference(logits, [r["labels"] for r in result]), result):
            r["masks"] = prob
        return {}
