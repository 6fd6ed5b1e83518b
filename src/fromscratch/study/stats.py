"""Gaps between arms with intervals, and the equivalence decision the verdict rests on.

The gap is pre-trained minus scratch (positive: pre-training ahead), averaged over seeds. Its
uncertainty has two parts that add:
- the validation images: a paired bootstrap (both arms scored on the same resampled image multiset,
  evaluation/bootstrap.py), of the seed-averaged gap;
- training noise: the seed-to-seed variance of each arm's AP on the fixed validation set, divided by
  its number of seeds. With one seed it cannot be measured, so a stated prior ``seed_std`` (AP) is used
  and the report says so: floating-point differences between machines are training noise too, and an
  interval that ignored it would let two such runs give opposite definite verdicts.
The interval is gap ± t·se at the stated level (90%: two one-sided 5% tests), with Welch-Satterthwaite
degrees of freedom when seed variances are measured. The decision with margin δ (docs/paper.md, The
verdict): within ±δ only if the interval lies inside (-δ, δ); one arm ahead by more than δ only if it
lies beyond δ; anything else is undecided, with what would decide it estimated from the variances.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fromscratch.evaluation.bootstrap import PerImageMatches, ap_of, resample_weights

KEYS = ("AP", "AP50", "AP75")


@dataclass
class Gap:
    """One metric's gap (pre-trained − scratch, AP points) with its interval and where it comes from."""

    metric: str
    gap: float
    lo: float
    hi: float
    se_images: float  # from the paired bootstrap (0 when no per-image detections were kept)
    images_resampled: bool  # False: no detections files, the interval has seed noise only
    se_seeds: float
    seeds_measured: bool  # False: one seed in an arm, the prior seed_std was used
    n_seeds: tuple[int, int]  # (pre-trained, scratch)
    n_images: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantile(level: float, df: float = math.inf) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (normal when infinite)."""
    from scipy.stats import norm, t

    return float(t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(norm.ppf(0.5 + level / 2))


def arm_variance(values: list[float], prior_sd: float) -> float:
    """One arm's seed-to-seed variance of an AP: measured with 2+ seeds, else the prior's."""
    return statistics.variance(values) if len(values) >= 2 else prior_sd ** 2


def seed_part(pre: list[float], scr: list[float], prior_sd: float) -> tuple[float, float, bool]:
    """(variance of the seed-averaged gap from training noise, its degrees of freedom, measured?)."""
    parts = [arm_variance(v, prior_sd) / max(1, len(v)) for v in (pre, scr)]
    dfs = [len(v) - 1 if len(v) >= 2 else math.inf for v in (pre, scr)]
    measured = len(pre) >= 2 and len(scr) >= 2
    var = sum(parts)
    denom = sum(p * p / d for p, d in zip(parts, dfs) if math.isfinite(d))
    return var, (var * var / denom if denom > 0 else math.inf), measured


def compare(pre: dict[str, list[float]], scr: dict[str, list[float]], pre_m: list[PerImageMatches] | None,
            scr_m: list[PerImageMatches] | None, metric_prefix: str, prior_sd: float, level: float = 0.90,
            rounds: int = 400, seed: int = 0) -> dict[str, Gap]:
    """Gaps for AP/AP50/AP75 of one IoU type. ``pre``/``scr``: {key: per-seed values}; ``*_m``: each seed's
    per-image matches on the same validation images (None: no image bootstrap)."""
    out: dict[str, Gap] = {}
    boot = _bootstrap(pre_m, scr_m, rounds, seed) if pre_m and scr_m else None
    for key in KEYS:
        if not pre.get(key) or not scr.get(key):
            continue
        gap = statistics.fmean(pre[key]) - statistics.fmean(scr[key])
        se_img = float(np.std(boot[key], ddof=1)) if boot is not None else 0.0
        var_seed, df_seed, measured = seed_part(pre[key], scr[key], prior_sd)
        var = se_img ** 2 + var_seed
        df = var * var / (var_seed ** 2 / df_seed) if math.isfinite(df_seed) and var_seed > 0 else math.inf
        half = quantile(level, df) * math.sqrt(var)
        n_img = len(pre_m[0].image_ids) if pre_m else 0
        out[f"{metric_prefix}.{key}"] = Gap(f"{metric_prefix}.{key}", gap, gap - half, gap + half, se_img,
                                            boot is not None, math.sqrt(var_seed), measured,
                                            (len(pre[key]), len(scr[key])), n_img, level)
    return out


def _bootstrap(pre_m: list[PerImageMatches], scr_m: list[PerImageMatches], rounds: int,
               seed: int) -> dict[str, np.ndarray]:
    ids = pre_m[0].image_ids
    weights = resample_weights(len(ids), rounds, seed)
    out = {k: np.zeros(rounds) for k in KEYS}
    for b, w in enumerate(weights):
        a = [ap_of(m, w) for m in pre_m]
        s = [ap_of(m, w) for m in scr_m]
        for k in KEYS:
            out[k][b] = statistics.fmean(x[k] for x in a) - statistics.fmean(x[k] for x in s)
    return out


def decide(g: Gap, margin: float) -> str:
    """"within", "pretrained ahead", "scratch ahead" or "undecided"."""
    if -margin < g.lo and g.hi < margin:
        return "within"
    if g.lo > margin:
        return "pretrained ahead"
    if g.hi < -margin:
        return "scratch ahead"
    return "undecided"


@dataclass
class Remedy:
    """What would decide an undecided gap, if it stayed where it is."""

    text: str
    seeds: int | None = None  # seeds per arm that would do it (None: seeds alone cannot)
    images: int | None = None  # validation images that would do it


def what_would_decide(g: Gap, margin: float, seed_var_per_arm: float) -> Remedy:
    """For an undecided gap: the seeds or validation images that would shrink the interval enough if the
    gap stayed where it is (from the measured, or assumed, variances)."""
    dist = abs(abs(g.gap) - margin)
    target = "within ±δ" if abs(g.gap) < margin else "ahead by more than δ"
    if dist < 0.1 * margin:
        return Remedy(f"the gap ({g.gap:+.1f}) sits at the margin δ={margin:g}: no affordable number of seeds or "
                      "images decides it; a longer schedule may move it")
    q = (g.hi - g.gap) / max(1e-12, math.hypot(g.se_images, g.se_seeds))  # the quantile in use
    se_needed = dist / q
    seeds = images = None
    tips = []
    if g.se_images < se_needed:
        seeds = max(2, math.ceil(2 * seed_var_per_arm / max(1e-12, se_needed ** 2 - g.se_images ** 2)))
        if seeds > max(g.n_seeds):
            tips.append(f"about {seeds} seeds per arm")
    if g.n_images and g.se_seeds < se_needed and g.se_images > 0:
        images = math.ceil(g.n_images * g.se_images ** 2 / max(1e-12, se_needed ** 2 - g.se_seeds ** 2))
        if images > g.n_images:
            tips.append(f"about {images} validation images (now {g.n_images})")
    if not tips:
        return Remedy(f"to show {target}, both more seeds and more validation images are needed", seeds, images)
    return Remedy(f"to show {target} if the gap stays at {g.gap:+.1f}: " + ", or ".join(tips), seeds, images)
