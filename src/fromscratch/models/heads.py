"""RoI heads the paper uses, from torchvision parts where they exist.

- box: ``2fc`` (torchvision's TwoMLPHead) or ``4conv1fc`` with norm (the paper's GN box head; Wu & He,
  Group Normalization, Sec. 6; torchvision's FastRCNNConvFCHead);
- mask: 4 convs with norm (torchvision's MaskRCNNHeads takes ``norm_layer``);
- keypoint: 8 convs of 512, norm optional (torchvision's KeypointRCNNHeads has no norm, so it is here).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.misc import Conv2dNormActivation

from fromscratch.models.norm import norm_factory


def box_head(kind: str, in_channels: int, resolution: int, conv_dim: int, fc_dim: int, norm: str,
             gn_groups: int) -> nn.Module:
    if kind == "2fc":
        return TwoMLPHead(in_channels * resolution ** 2, fc_dim)
    return FastRCNNConvFCHead((in_channels, resolution, resolution), [conv_dim] * 4, [fc_dim],
                              norm_layer=norm_factory(norm, gn_groups))


def mask_head(in_channels: int, convs: int, dim: int, norm: str, gn_groups: int) -> nn.Module:
    return MaskRCNNHeads(in_channels, [dim] * convs, 1, norm_layer=norm_factory(norm, gn_groups))


class KeypointHead(nn.Sequential):
    """Mask R-CNN's keypoint head: 8 x (3x3 conv 512, [norm], ReLU); MSRA init like torchvision's."""

    def __init__(self, in_channels: int, dim: int = 512, convs: int = 8, norm: str = "none", gn_groups: int = 32):
        layers, c = [], in_channels
        for _ in range(convs):
            layers.append(Conv2dNormActivation(c, dim, 3, norm_layer=norm_factory(norm, gn_groups)))
            c = dim
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
