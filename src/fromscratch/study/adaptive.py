"""``adaptive: true``: answer the study's question without training the whole grid.

Round 1 trains the shortest schedule of every arm, size and seed. After each round the report is
rebuilt and each data size gets one of these actions, from its verdict (study/verdict.py):
- final: "within ±δ" with the pre-trained arm not forecast to gain more than δ at longer schedules,
  scratch ahead by more than δ, or pre-training ahead and out of scratch's reach within the study: either
  scratch's forecast at the schedules left, even at the upper 90% bound for a seed mean, stays more than δ below
  pre-training's measured best (which longer schedules can only raise, the verdict being best vs best),
  or pre-training's own curve has flattened (as for "within") and scratch's forecast mean does not come
  within δ by the longest schedule (a mean forecast from the steep part of both curves decides nothing);
- more seeds: undecided, and the seeds that would decide it fit under ``max_seeds``;
- a longer schedule: anything else while a longer one is left (it branches from the shorter run's
  checkpoint, as in the full grid);
- stop: the longest schedule and ``max_seeds`` are reached (the verdict stays as it is).
``adaptive.json`` records every round, what ran, what was skipped and the iterations saved against the
full grid of the declared seeds; the report quotes it.
"""
from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.study.accounting import read_metrics
from fromscratch.study.plan import PlannedRun, Study
from fromscratch.utils import atomic_write_text

logger = logging.getLogger(__name__)


def settled(v: dict[str, Any], n_sched: int) -> bool:
    """Pre-training's own curve has flattened: 2+ schedules measured, and its forecast up to the study's
    longest schedule gains no more than δ over its measured best. Until then a forecast of where the
    arms end is an extrapolation from the steep part of the curves, and no size is final on it."""
    f = v["forecast"]
    if n_sched < 2:
        return False
    within_study = [x["mean"] for x in f.get("pretrained", []) if x["schedule"] <= f.get("longest", float("inf"))]
    return max(within_study, default=v["best_pretrained"]) - v["best_pretrained"] <= v["margin"]


def out_of_reach(v: dict[str, Any]) -> bool:
    """Scratch cannot catch up within the study: the highest its seed mean is expected to reach at the
    study's schedules not run yet (forecast upper bound plus seed noise, ``scratch_reach``) is more than
    δ below pre-training's measured best. That best only grows with longer schedules (the verdict
    compares best with best), so pre-training's own forecast is not needed."""
    reach = v["forecast"].get("scratch_reach")
    return reach is not None and reach < v["best_pretrained"] - v["margin"]


def action(v: dict[str, Any], n_sched: int, n_total: int, n_seeds: int, max_seeds: int) -> str:
    """"final", "seeds:N", "extend" or "stop" for one size's verdict."""
    decision, f = v["decision"], v["forecast"]
    longer_left = n_sched < n_total
    if decision == "within" and f.get("pretrained") and settled(v, n_sched):
        return "final"
    if decision == "scratch ahead":
        return "final"  # scratch already beats pre-training's best by more than δ
    if decision == "pretrained ahead" and out_of_reach(v):
        return "final"
    if decision == "pretrained ahead" and "catch_up" in f and settled(v, n_sched):
        hit = f["catch_up"]
        if hit is None or hit["schedule"] > f["longest"]:  # not within δ by the study's longest schedule
            return "final"
    if decision == "undecided" and v.get("seeds_needed") and n_seeds < v["seeds_needed"] <= max_seeds:
        return f"seeds:{v['seeds_needed']}"
    return "extend" if longer_left else "stop"


def run_adaptive(study: Study, runs: list[PlannedRun], study_dir: Path,
                 execute_all: Callable[[list[PlannedRun]], None],
                 report: Callable[[list[str]], list[dict[str, Any]]]) -> dict[str, Any]:
    """Rounds of training and deciding; ``execute_all`` trains a list of runs (chains kept in order),
    ``report`` rebuilds the report from the named runs only and returns its verdicts (a run the rounds
    have not asked for, finished in an earlier attempt, must not decide a round)."""
    scheds = sorted(study.schedules, key=parse_multiplier)
    seeds = sorted({r.seed for r in runs})
    sizes = [str(s) for s in study.data_sizes]
    n_sched = {s: 1 for s in sizes}
    n_seed = {s: len(study.seeds) for s in sizes}
    rounds: list[dict[str, Any]] = []
    while True:
        wanted = [r for r in runs if scheds.index(r.schedule) < n_sched[str(r.size)]
                  and seeds.index(r.seed) < n_seed[str(r.size)]]
        # a report made while the round trains (or after a crash) reads this round's runs, not an old list
        _write(study, runs, wanted, study_dir, rounds, complete=False)
        execute_all(wanted)
        verdicts = report([r.name for r in wanted])
        step: dict[str, Any] = {"round": len(rounds) + 1, "runs": [r.name for r in wanted], "actions": {}}
        for size in sizes:
            vs = [v for v in verdicts if v["size"] == size]
            acts = [action(v, n_sched[size], len(scheds), n_seed[size], study.max_seeds) for v in vs] \
                or (["extend"] if n_sched[size] < len(scheds) else ["stop"])  # no verdict (yet): longer runs
            act = _combine(acts)
            step["actions"][size] = act
            if act == "extend":
                n_sched[size] += 1
            elif act.startswith("seeds:"):
                n_seed[size] = min(study.max_seeds, int(act.split(":")[1]))
        rounds.append(step)
        logger.info(f"adaptive round {step['round']}: " + ", ".join(f"{k}: {a}" for k, a in step["actions"].items()))
        if all(a in ("final", "stop") for a in step["actions"].values()):
            break
    return _write(study, runs, wanted, study_dir, rounds, complete=True)


def _write(study: Study, runs: list[PlannedRun], wanted: list[PlannedRun], study_dir: Path,
           rounds: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    """adaptive.json: written before each round trains (``complete`` false) and once at the end, so no
    earlier attempt's list of runs outlives the round that replaces it."""
    summary = {**savings(study, runs, wanted, study_dir), "rounds": rounds, "complete": complete}
    atomic_write_text(study_dir / "adaptive.json", json.dumps(summary, indent=1))
    return summary


def _combine(acts: list[str]) -> str:
    """Several pre-trained arms at one size: the size is done only when every comparison is."""
    for kind in ("extend", "seeds:"):
        hit = [a for a in acts if a.startswith(kind)]
        if hit:
            return max(hit, key=lambda a: int(a.split(":")[1]) if ":" in a else 0)
    return "stop" if "stop" in acts else "final"


def _own_iterations(r: PlannedRun) -> int:
    return r.total_iters - r.branch_iter


def savings(study: Study, runs: list[PlannedRun], ran: list[PlannedRun], study_dir: Path) -> dict[str, Any]:
    """Iterations (exact) and wall time (at the measured seconds per iteration) against the full grid of
    the declared seeds."""
    grid = [r for r in runs if r.seed in study.seeds]
    full, done = sum(map(_own_iterations, grid)), sum(map(_own_iterations, ran))
    times = []
    for r in ran:
        train, _ = read_metrics(r.folder(study_dir))
        times += [x["time"] for x in train if "time" in x]
    per_iter = statistics.fmean(times) if times else None
    names = {r.name for r in ran}
    return {"ran": sorted(names), "skipped": sorted(r.name for r in grid if r.name not in names),
            "iterations_full_grid": full, "iterations_adaptive": done, "fraction": done / max(1, full),
            "seconds_per_iteration": per_iter,
            "wall_full_grid_s": full * per_iter if per_iter else None,
            "wall_adaptive_s": done * per_iter if per_iter else None}


def summary_lines(study_dir: Path) -> list[str]:
    """The report's "Adaptive study" section, from adaptive.json."""
    path = study_dir / "adaptive.json"
    if not path.exists():
        return []
    a = json.loads(path.read_text())
    lines = ["## Adaptive study", ""]
    if not a.get("complete", True):
        lines += ["In progress: the rounds so far, and the runs of the round now training.", ""]
    lines.append(f"{len(a['ran'])} runs trained, {len(a['skipped'])} of the full grid skipped: "
                 f"{a['iterations_adaptive']:,} training iterations against {a['iterations_full_grid']:,} for the "
                 f"full grid ({a['fraction']:.0%}).")
    if a.get("seconds_per_iteration"):
        lines[-1] += (f" At the measured {a['seconds_per_iteration']:.2f} s per iteration: "
                      f"{a['wall_adaptive_s'] / 60:.1f} min against {a['wall_full_grid_s'] / 60:.1f} min.")
    lines += ["", "| round | runs | decisions per data size |", "|---|---|---|"]
    for r in a["rounds"]:
        lines.append(f"| {r['round']} | {len(r['runs'])} | " + ", ".join(f"{k}: {v}" for k, v in r["actions"].items())
                     + " |")
    if a["skipped"]:
        lines += ["", "Skipped: " + ", ".join(a["skipped"]) + "."]
    return lines
