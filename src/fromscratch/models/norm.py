"""Normalization by name: "GN" | "SyncBN" | "FrozenBN" | "BN" | "none" -> a layer factory
(detectron2's ``get_norm`` string factory; the paper replaces every frozen BN with GN or SyncBN).

SyncBN: the batch statistics are all-reduced here, on CPU (gloo) and CUDA (NCCL) alike, with an
autograd-aware all-reduce of sums and counts, not means: processes with unequal batch sizes, or with
none at all (RoI heads can get zero RoIs, detectron2 #366), give the statistics and gradients of BN over
the concatenated batch, weighted by each process's sample count (detectron2's NaiveSyncBatchNorm with
stats_mode="N", mmcv's SyncBN). One code path, so what the CPU tests prove holds on the GPU: torch's
``nn.SyncBatchNorm`` refuses CPU tensors, and its handling of empty inputs changed between releases.
Statistics in float64, no host sync (no ``.item()``), so it stays cheap inside a CUDA step.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from fromscratch import comm

NORMS = ("GN", "SyncBN", "FrozenBN", "BN", "none")


class SyncBatchNorm(_BatchNorm):
    """Cross-process BN that also runs on CPU (gloo) and with empty inputs on some processes.

    Not a subclass of ``nn.SyncBatchNorm``: DDP refuses those in CPU modules. Same attributes
    (``process_group`` and the BN buffers), so ``nn.SyncBatchNorm`` checkpoints load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def _check_non_zero_input_channels(self, x: torch.Tensor) -> None:
        if x.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or comm.world_size() == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum if self.momentum is not None else 0.1, self.eps) \
                if x.numel() else x * self.weight.view(1, -1, *[1] * (x.dim() - 2))
        return self._allreduce_forward(x)

    def _allreduce_forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()  # x itself in fp32; a float32 copy under bf16/fp16 autocast (no float64 copy kept)
        count = torch.full((1,), x.numel() // c if x.numel() else 0, dtype=torch.float64, device=x.device)
        if x.numel():  # sums accumulated in float64
            local = torch.cat([xf.sum(dims, dtype=torch.float64), (xf * xf).sum(dims, dtype=torch.float64)])
        else:  # zeros that depend on the weight: this process must join the backward all-reduce too
            local = (self.weight.double().sum() * 0).expand(2 * c)
        stats = torch.cat([local, count])
        stats = all_reduce(stats, group=self.process_group or dist.group.WORLD)
        n = stats[-1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        seen = n > 0  # False only when every process is empty: then x is empty too, the buffers stay
        mean = stats[:c] / n.clamp_min(1)
        var = (stats[c:2 * c] / n.clamp_min(1) - mean * mean).clamp_min(0)
        with torch.no_grad():
            m = (self.momentum if self.momentum is not None else 0.1) * seen.double()
            unbiased = var * n / (n - 1).clamp_min(1)
            self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
            self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
            self.num_batches_tracked.add_(seen.long())
        inv = torch.rsqrt(var + self.eps).float()  # normalized in fp32, returned in the input's dtype
        y = (xf - mean.float().view(shape)) * (inv * self.weight.float()).view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def gn_groups_for(channels: int, groups: int) -> int:
    """``groups`` if it divides ``channels``, else the largest divisor below it."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def norm_factory(name: str, gn_groups: int = 32) -> Callable[[int], nn.Module] | None:
    """A callable ``channels -> layer``, usable as torchvision's ``norm_layer`` argument; ``None`` for
    "none", so torchvision's conv blocks keep their bias."""
    if name == "GN":
        return lambda c: nn.GroupNorm(gn_groups_for(c, gn_groups), c)
    if name == "SyncBN":
        return SyncBatchNorm
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "BN":
        return nn.BatchNorm2d
    if name == "none":
        return None
    raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")


NORM_TYPES = (nn.GroupNorm, _BatchNorm, FrozenBatchNorm2d, nn.LayerNorm)


def is_norm(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, NORM_TYPES) or "BatchNorm" in name or "GroupNorm" in name


def norm_kind(m: nn.Module) -> str:
    if isinstance(m, nn.GroupNorm):
        return "GN"
    if isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm)):
        return "SyncBN"
    if isinstance(m, FrozenBatchNorm2d) or "Frozen" in type(m).__name__:
        return "FrozenBN"
    return type(m).__name__
