"""Trunks with a chosen norm in every layer, and FPN (P2-P6) with norm on lateral and output convs.

ResNet/ResNeXt come from torchvision's ``ResNet`` class with ``norm_layer`` set, so stem, blocks and
shortcuts all get the norm (the paper: GN replaces *every* frozen BN). timm trunks come through
``features_only``; their BatchNorm layers are swapped for the chosen norm after building, keeping
each layer's activation and state-dict keys, so GN-pretrained timm weights still load.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from fromscratch.errors import ConfigError
from fromscratch.models.norm import SyncBatchNorm, gn_groups_for, norm_factory

# name -> (block, layers per stage, groups, width per group)
RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], 32, 8),
    "resnext152_32x8d": (Bottleneck, [3, 8, 36, 3], 32, 8),  # the paper's X152
}
IMAGENET = {"imagenet:efficientnet_lite0": "efficientnet_lite0"}


def _layer_norm(norm: str, gn_groups: int) -> Callable[[int], nn.Module]:
    return norm_factory(norm, gn_groups) or (lambda c: nn.Identity())


def resnet_trunk(name: str, norm: str, gn_groups: int = 32) -> ResNet:
    """torchvision ResNet with the norm everywhere; no zero-init of the last residual norm (it hurts
    GN from scratch: the paper, Sec. 4 / detectron2 resnet.py)."""
    block, layers, groups, width = RESNETS[name]
    return ResNet(block, layers, groups=groups, width_per_group=width, norm_layer=_layer_norm(norm, gn_groups),
                  zero_init_residual=False)


def resnet_fpn(name: str, norm: str, gn_groups: int, fpn_channels: int, fpn_norm: str) -> BackboneWithFPN:
    trunk = resnet_trunk(name, norm, gn_groups)
    c = 512 if RESNETS[name][0] is BasicBlock else 2048
    return BackboneWithFPN(trunk, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           [c // 8, c // 4, c // 2, c], fpn_channels, extra_blocks=LastLevelMaxPool(),
                           norm_layer=norm_factory(fpn_norm, gn_groups))


class _GroupNormAct(nn.GroupNorm):
    def __init__(self, groups: int, channels: int, act: nn.Module):
        super().__init__(groups, channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class _SyncBNAct(SyncBatchNorm):
    def __init__(self, channels: int, act: nn.Module):
        super().__init__(channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def convert_norms(module: nn.Module, norm: str, gn_groups: int) -> nn.Module:
    """Replace every BatchNorm2d (timm's BatchNormAct2d included) by ``norm``, keeping activations."""
    if norm == "BN":
        return module
    if norm == "FrozenBN":
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            act = nn.Sequential(getattr(child, "drop", nn.Identity()), getattr(child, "act", nn.Identity()))
            if norm == "GN":
                new: nn.Module = _GroupNormAct(gn_groups_for(c, gn_groups), c, act)
            elif norm == "SyncBN":
                new = _SyncBNAct(c, act)
            else:
                new = act
            setattr(module, name, new)
        else:
            convert_norms(child, norm, gn_groups)
    return module


class TimmFPN(nn.Module):
    """A timm trunk (``features_only``, strides 4-32) under an FPN; ``body`` is the trunk."""

    def __init__(self, timm_name: str, norm: str, gn_groups: int, fpn_channels: int, fpn_norm: str):
        super().__init__()
        import timm

        try:
            probe = timm.create_model(timm_name, pretrained=False, features_only=True)
        except Exception as e:  # timm raises RuntimeError for unknown names
            raise ConfigError(f"model.backbone.name: timm has no features_only model '{timm_name}' ({e})") from None
        red = probe.feature_info.reduction()
        idx = tuple(i for i, r in enumerate(red) if r in (4, 8, 16, 32))
        if len(idx) != 4:
            raise ConfigError(f"model.backbone.name: timm '{timm_name}' has strides {red}; FPN needs 4, 8, 16, 32")
        self.body = convert_norms(timm.create_model(timm_name, pretrained=False, features_only=True,
                                                    out_indices=idx), norm, gn_groups)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), fpn_channels, LastLevelMaxPool(),
                                         norm_layer=norm_factory(fpn_norm, gn_groups))
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class VGG16C5(nn.Module):
    """VGG-16 up to conv5_3 (stride 16, no last max-pool) as the paper's no-FPN, no-norm Faster R-CNN
    trunk; ``body.features`` has torchvision's ``vgg16`` key names, so its ImageNet weights load."""

    def __init__(self, norm: str = "none", gn_groups: int = 32):
        super().__init__()
        from torchvision.models import vgg16

        self.body = nn.Module()
        layers = list(vgg16(weights=None).features.children())[:-1]  # drop pool5: stride 16
        if norm != "none":  # the paper's VGG has no norm; others get one after every conv
            make = norm_factory(norm, gn_groups)
            assert make is not None
            layers = [m for layer in layers for m in ([layer, make(layer.out_channels)]
                                                       if isinstance(layer, nn.Conv2d) else [layer])]
        self.body.features = nn.Sequential(*layers)
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.features(x)


def build_backbone(name: str, norm: str, gn_groups: int, fpn_channels: int, fpn_norm: str) -> nn.Module:
    """Trunk + FPN by name: a torchvision ResNet/ResNeXt, ``timm:<name>``, ``imagenet:<name>``, or
    ``vgg16`` (no FPN: one stride-16 feature map)."""
    if name == "vgg16":
        return VGG16C5(norm, gn_groups)
    if name in RESNETS:
        return resnet_fpn(name, norm, gn_groups, fpn_channels, fpn_norm)
    if name in IMAGENET:
        return TimmFPN(IMAGENET[name], norm, gn_groups, fpn_channels, fpn_norm)
    if name.startswith("timm:"):
        return TimmFPN(name[5:], norm, gn_groups, fpn_channels, fpn_norm)
    raise ConfigError(f"model.backbone.name: unknown backbone '{name}'; expected one of {sorted(RESNETS)}, "
                      f"{sorted(IMAGENET)} or timm:<name>")
