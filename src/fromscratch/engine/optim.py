"""SGD with the paper's parameter groups: weight decay 1e-4, none on norm parameters (Detectron
``WEIGHT_DECAY_GN=0``, detectron2 ``WEIGHT_DECAY_NORM=0``)."""
from __future__ import annotations

import torch
from torch import nn

from fromscratch.models.norm import is_norm


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict]:
    norm_params, other = [], []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm_params if is_norm(module) else other).append(p)
    return [{"params": other, "weight_decay": weight_decay, "name": "default"},
            {"params": norm_params, "weight_decay": weight_decay_norm, "name": "norm"}]


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                    weight_decay_norm: float) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, weight_decay, weight_decay_norm), lr=lr, momentum=momentum)
