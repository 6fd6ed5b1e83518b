"""Forecast an arm's final AP at schedules not run yet, from the schedules that were.

What is fitted: the *final* AP of each run against its schedule length m (the Nx multiplier), not the
AP curve inside a run. Step schedules make AP jump at every LR drop, and a longer schedule's curve
before its first drop is the high-LR plateau, not a final AP; the final APs of 1x, 2x, 3x ... lie on one
smooth, saturating curve (the paper's Fig. 1 and Table 1 read this way).

The curve: the "pow3" family of learning-curve extrapolation, AP(m) = a − b·m^(−c). For a fixed
exponent c it is linear in (a, b), so each c on a grid (−1 to 2.5: accelerating to saturating) is a
least-squares fit with its parameter covariance; the fits are averaged with weights exp(−RSS/2σ²), σ
being the seed-to-seed spread of final AP (measured, or the study's ``seed_std`` prior) or, when larger,
the best fit's residual variance. Two schedules, which every c fits exactly, give a
forecast as wide as the choice of c makes it; three that no c fits well give a wide one too. One
schedule forecasts nothing. The held-out check (``fromscratch forecast --holdout``) measures it.
Docs: docs/paper.md, "Forecasting the catch-up schedule".
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fromscratch.study.stats import quantile

# c > 0: saturating curves (the usual shape once a detector learns); c < 0: still accelerating (the slow
# start of a barely trained detector, where final AP grows faster than the schedule)
EXPONENTS = np.concatenate([-np.geomspace(0.1, 1.0, 8), np.geomspace(0.2, 2.5, 24)])


@dataclass
class Forecast:
    schedule: float  # multiplier m
    mean: float
    lo: float
    hi: float
    measured: float | None = None  # the seed-mean of a run that exists at this schedule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_sd(points: dict[float, list[float]], prior_sd: float) -> float:
    """Seed-to-seed spread of a final AP: pooled over schedules with 2+ seeds, else the prior."""
    dev = [(v - statistics.fmean(vs)) ** 2 for vs in points.values() if len(vs) >= 2 for v in vs]
    dof = sum(len(vs) - 1 for vs in points.values() if len(vs) >= 2)
    return math.sqrt(sum(dev) / dof) if dof else prior_sd


def fit(points: dict[float, list[float]], prior_sd: float) -> list[tuple[float, np.ndarray, np.ndarray, float]]:
    """(weight, beta, covariance, exponent) per exponent; empty with fewer than 2 schedules."""
    if len(points) < 2:
        return []
    ms = np.array([m for m, vs in points.items() for _ in vs], dtype=float)
    ys = np.array([v for vs in points.values() for v in vs], dtype=float)
    fits, rss = [], []
    for c in EXPONENTS:
        x = np.stack([np.ones_like(ms), -(ms ** -c)], axis=1)
        xtx_inv = np.linalg.pinv(x.T @ x)
        beta = xtx_inv @ x.T @ ys
        rss.append(float(((ys - x @ beta) ** 2).sum()))
        fits.append((beta, xtx_inv, float(c)))
    # noise: the seed spread, or the best fit's lack of fit when larger (no exponent fits: say so in the width)
    var = max(noise_sd(points, prior_sd) ** 2, min(rss) / max(1, len(ys) - 2), 1e-6)
    logw = [-r / (2 * var) for r in rss]
    w = np.exp(np.array(logw) - max(logw))
    w /= w.sum()
    return [(float(wi), b, var * xtx_inv, c) for wi, (b, xtx_inv, c) in zip(w, fits)]


def predict(fits: list, m: float) -> tuple[float, float]:
    """(mean, sd) of the seed-mean final AP at schedule ``m`` (model average over exponents)."""
    means, variances, weights = [], [], []
    for w, beta, cov, c in fits:
        x = np.array([1.0, -(m ** -c)])
        means.append(float(x @ beta))
        variances.append(float(x @ cov @ x))
        weights.append(w)
    mu = float(np.dot(weights, means))
    var = float(np.dot(weights, np.array(variances) + np.array(means) ** 2)) - mu * mu
    return mu, math.sqrt(max(var, 0.0))


def forecast_arm(points: dict[float, list[float]], schedules: list[float], prior_sd: float,
                 level: float = 0.90) -> list[Forecast]:
    """A forecast at each of ``schedules`` (measured ones get theirs beside); [] with < 2 schedules."""
    fits = fit(points, prior_sd)
    if not fits:
        return []
    out = []
    for m in schedules:
        mean, sd = predict(fits, m)
        lo, hi = mean - quantile(level) * sd, mean + quantile(level) * sd
        measured = statistics.fmean(points[m]) if m in points else None
        out.append(Forecast(m, mean, lo, hi, measured))
    return out


def upper_reach(points: dict[float, list[float]], schedules: list[float], prior_sd: float, n_seeds: int,
                level: float = 0.90) -> float | None:
    """The highest value the seed mean of ``n_seeds`` new runs is expected to reach at any of ``schedules``
    not measured yet: the upper bound of the interval for a measurement (the forecast's uncertainty plus
    the seed noise of that mean, as in holdout_error). None without a forecast or with nothing left."""
    fits = fit(points, prior_sd)
    todo = [m for m in schedules if m not in points]
    if not fits or not todo:
        return None
    noise = noise_sd(points, prior_sd) ** 2 / max(1, n_seeds)
    z = quantile(level)
    return max(mean + z * math.sqrt(sd * sd + noise) for mean, sd in (predict(fits, m) for m in todo))


def catch_up(scratch: list[Forecast], reference: float, margin: float) -> Forecast | None:
    """The shortest schedule whose (measured, else forecast) scratch AP is within ``margin`` of
    ``reference`` (the pre-trained arm's best), or None."""
    for f in sorted(scratch, key=lambda f: f.schedule):
        value = f.measured if f.measured is not None else f.mean
        if value >= reference - margin:
            return f
    return None


def holdout_error(points: dict[float, list[float]], prior_sd: float, level: float = 0.90) -> dict[str, Any] | None:
    """Forecast the longest schedule from the shorter ones; the error, and whether the interval for a
    measurement (the forecast's uncertainty plus the seed noise of a mean over that many seeds) held it."""
    if len(points) < 3:
        return None
    longest = max(points)
    rest = {m: v for m, v in points.items() if m != longest}
    mean, sd = predict(fit(rest, prior_sd), longest)
    noise = noise_sd(rest, prior_sd) ** 2 / len(points[longest])
    half = quantile(level) * math.sqrt(sd * sd + noise)
    truth = statistics.fmean(points[longest])
    return {"schedule": longest, "forecast": mean, "lo": mean - half, "hi": mean + half, "measured": truth,
            "error": mean - truth, "covered": mean - half <= truth <= mean + half, "from": sorted(rest)}


# ----------------------------------------------------------------------------------- from a study folder

def _cells_from_report_table(report: Path) -> dict[tuple[str, str, str], list[float]]:
    """Box AP per (arm, size, schedule) from an older report.md's "Box AP by schedule" table (mean ± sd
    over n seeds): n values with that mean and sample sd, enough for a fit that only uses both."""
    text = report.read_text()
    seeds = re.search(r"seeds: \[([^\]]*)\]", text)
    n = len(seeds.group(1).split(",")) if seeds else 1
    lines = text.split("## Box AP by schedule", 1)[1].splitlines()
    header = next(ln for ln in lines if ln.startswith("| data |"))
    scheds = [c.strip() for c in header.strip("|").split("|")[2:]]
    out: dict[tuple[str, str, str], list[float]] = {}
    for ln in lines[lines.index(header) + 2:]:
        if not ln.startswith("|"):
            break
        size, arm, *vals = [c.strip() for c in ln.strip("|").split("|")]
        for s, v in zip(scheds, vals):
            if v in ("", "-"):
                continue
            mean, _, sd = v.partition("±")
            m, d = float(mean), float(sd or 0)
            spread = [-1.0, 0.0, 1.0] if n == 3 else ([-(2 ** -0.5), 2 ** -0.5] if n == 2 else [0.0] * n)
            out[(arm, size, s)] = [m + d * k for k in spread]
    return out


def study_points(study_dir: Path) -> dict[tuple[str, str], dict[float, list[float]]]:
    """Final box AP per seed, by (arm, size) then schedule multiplier: from cells.json (written by every
    report), else the run folders, else an older report.md's table."""
    from fromscratch.engine.schedule import parse_multiplier

    study_dir = Path(study_dir)
    if (study_dir / "cells.json").exists():
        raw = json.loads((study_dir / "cells.json").read_text())
        cells = {tuple(k.split("|")): v["values"].get("bbox.AP", []) for k, v in raw.items()}
    elif (study_dir / "plan.json").exists():
        from fromscratch.study.report import cells as make_cells
        from fromscratch.study.report import load_results

        cells = {k: c.values.get("bbox.AP", []) for k, c in make_cells(load_results(study_dir)[1]).items()}
    else:
        cells = _cells_from_report_table(study_dir / "report.md")
    out: dict[tuple[str, str], dict[float, list[float]]] = {}
    for (arm, size, sched), values in cells.items():
        if values:
            out.setdefault((arm, size), {})[parse_multiplier(sched)] = list(values)
    return out


def holdout_table(study_dirs: list[Path], prior_sd: float = 1.0, level: float = 0.90) -> str:
    """Markdown: every chain with 3+ schedules, its longest forecast from the shorter ones."""
    rows, covered, errors = [], 0, []
    for d in study_dirs:
        for (arm, size), points in sorted(study_points(d).items()):
            r = holdout_error(points, prior_sd, level)
            if r is None:
                continue
            rows.append(f"| {d} | {size} | {arm} | {', '.join(f'{m:g}x' for m in r['from'])} | {r['schedule']:g}x | "
                        f"{r['forecast']:.1f} [{r['lo']:.1f}, {r['hi']:.1f}] | {r['measured']:.1f} | "
                        f"{r['error']:+.1f} | {'yes' if r['covered'] else 'no'} |")
            covered += r["covered"]
            errors.append(abs(r["error"]))
    if not rows:
        return "no chain with 3 or more finished schedules\n"
    head = ["| study | data | arm | fitted on | held out | forecast [interval] | measured | error | covered |",
            "|---|---|---|---|---|---|---|---|---|"]
    tail = [f"\n{len(rows)} chains: mean absolute error {statistics.fmean(errors):.2f} AP; {covered} of {len(rows)} "
            f"measured values inside their {level:.0%} interval."]
    return "\n".join(head + rows + tail) + "\n"


def forecast_table(study_dir: Path, prior_sd: float = 1.0, level: float = 0.90) -> str:
    """Markdown: each arm and size, measured and forecast final box AP at the study's schedules and at
    2x and 3x its longest."""
    lines = ["| data | arm | schedule | measured | forecast [interval] |", "|---|---|---|---|---|"]
    for (arm, size), points in sorted(study_points(study_dir).items()):
        longest = max(points)
        grid = sorted(set(points) | {2 * longest, 3 * longest})
        fs = forecast_arm(points, grid, prior_sd, level)
        if not fs:
            lines.append(f"| {size} | {arm} | - | - | needs two finished schedules |")
        for f in fs:
            meas = f"{f.measured:.1f}" if f.measured is not None else ""
            lines.append(f"| {size} | {arm} | {f.schedule:g}x | {meas} | {f.mean:.1f} [{f.lo:.1f}, {f.hi:.1f}] |")
    return "\n".join(lines) + "\n"
