"""`fromscratch model show`: what a user must check before a long run (norms, frozen parameters, size)."""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from fromscratch.models.norm import is_norm, norm_kind

PARTS = (("trunk", "backbone.body"), ("fpn", "backbone.fpn"), ("rpn", "rpn"), ("roi heads", "roi_heads"))


def _part(name: str) -> str:
    return next((label for label, prefix in PARTS if name.startswith(prefix)), "other")


def norm_table(model: nn.Module) -> dict[str, Counter]:
    """{part: Counter(norm kind -> count)} over every norm layer of the model."""
    out: dict[str, Counter] = {}
    for name, m in model.named_modules():
        if is_norm(m):
            out.setdefault(_part(name), Counter())[norm_kind(m)] += 1
    return out


def count_flops(model: nn.Module, size: int) -> int:
    """FLOPs of one eval forward on a ``size`` x ``size`` image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model([torch.rand(3, size, size)])
    model.train(was)
    return int(fc.get_total_flops())


def summarize(model: nn.Module, size: int | None = None) -> str:
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    frozen = [(n, p) for n, p in params if not p.requires_grad]
    lines = [f"model: {type(model).__name__}, init: {getattr(model, 'init_kind', '?')}",
             f"parameters: {total:,} ({total - sum(p.numel() for _, p in frozen):,} trainable)",
             f"frozen parameters: {sum(p.numel() for _, p in frozen):,} in {len(frozen)} tensors"]
    if frozen:
        lines.append("  first frozen: " + ", ".join(n for n, _ in frozen[:5]))
    lines.append("norm layers:")
    for part, counts in norm_table(model).items():
        lines.append(f"  {part}: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    if getattr(model, "load_report", None) is not None:
        lines.append(model.load_report.summary())
    if size:
        lines.append(f"FLOPs (eval forward, {size}x{size}): {count_flops(model, size) / 1e9:.1f} G")
    return "\n".join(lines)
