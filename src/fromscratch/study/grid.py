"""A study's ``grid:``: the paper's small-data protocol (Sec. 5.2) as a search before the study's runs.

At each size in ``grid.sizes`` the tuned arm (``grid.arm``, by default the first pre-trained arm) trains
one trial per combination of the listed values (base LR, LR decay factor, training scales) at the
study's shortest schedule (or ``grid.schedule``) with its first seed. The combination with the best
final ``grid.metric`` on the validation set is then used by *every* arm at that size, as the paper
applied the values tuned on the pre-trained model to both; at ``grid.scratch_sizes`` each other arm
gets its own search too (the paper searched scratch at its smallest size). The trials evaluate on the
study's validation set, as the paper tuned on val2017: the tuned arm's numbers carry that selection.

Trials are ordinary runs (``runs/grid_<size>_<arm>_<k>``) trained by the study's executor, in
parallel, resumable and skipped when complete; ``grid.json`` records every trial and the choice, and
the report lists them. No pruning: the trials run at the small sizes, where a schedule is short.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

from fromscratch.config import Config, load_config
from fromscratch.engine.schedule import make_plan, parse_multiplier
from fromscratch.errors import ConfigError
from fromscratch.study.accounting import read_metrics
from fromscratch.study.plan import Arm, PlannedRun, Study, dotted_overrides, grid_arm, run_overrides, scheduled_run
from fromscratch.utils import atomic_write_text

logger = logging.getLogger(__name__)

KEYS = (("base_lr", "train.base_lr"), ("decay_factor", "train.decay_factor"), ("train_scales", "data.train_scales"))


def combinations(study: Study) -> list[dict[str, Any]]:
    """Every combination of the grid's values as dotted overrides, in a fixed order."""
    assert study.grid is not None
    axes = [(dotted, getattr(study.grid, key)) for key, dotted in KEYS if getattr(study.grid, key)]
    return [dict(zip([a for a, _ in axes], values)) for values in itertools.product(*(v for _, v in axes))]


def searched_arms(study: Study, size: int | str) -> list[Arm]:
    """The arms searched at ``size``: the tuned arm, plus every other arm at a ``scratch_sizes`` size."""
    assert study.grid is not None
    tuned = grid_arm(study)
    others = [a for a in study.arms if a.name != tuned.name] \
        if str(size) in [str(x) for x in study.grid.scratch_sizes] else []
    return [tuned, *others]


def plan_trials(study: Study, base: Path, study_dir: Path,
                train_size: int) -> tuple[list[PlannedRun], dict[str, Config]]:
    """The grid's trial runs and their configs (none without ``grid:``)."""
    if study.grid is None:
        return [], {}
    sched = study.grid.schedule or sorted(study.schedules, key=parse_multiplier)[0]
    seed = study.seeds[0]
    trials: list[PlannedRun] = []
    configs: dict[str, Config] = {}
    for size in study.grid.sizes:
        n = train_size if size == "all" else int(size)
        for arm in searched_arms(study, size):
            for k, combo in enumerate(combinations(study)):
                over = {**run_overrides(study, arm, size, seed, study_dir), **combo}
                cfg = load_config(base / study.detector, dotted_overrides(over))
                total = make_plan(cfg.train.model_copy(update={"schedule": sched}), n).total_iters
                name = f"grid_{size}_{arm.name}_{k}"
                t, configs[name] = scheduled_run(name, arm.name, size, sched, seed, over, cfg, n,
                                                 max(1, total // max(1, study.eval_points)), study_dir, grid_trial=k)
                trials.append(t)
    return trials, configs


def final_metric(folder: Path, total_iters: int, metric: str) -> float | None:
    """The trial's ``metric`` (e.g. "bbox.AP") at its last iteration (or where it stopped early), None
    while it is not there."""
    _, evals = read_metrics(folder)
    kind, key = metric.split(".", 1)
    last = evals[-1] if evals else None
    stop = folder / "early_stopped.json"
    end = json.loads(stop.read_text())["iteration"] if stop.exists() else total_iters
    if last is None or last["iteration"] != end or kind not in last:
        return None
    return float(last[kind][key])


def _check_values(trial: PlannedRun, combo: dict[str, Any], study_dir: Path) -> None:
    """A finished trial must have trained with the values its index stands for now: a grid whose values
    changed since would otherwise credit old results to new values."""
    path = trial.folder(study_dir) / "config.yaml"
    if not path.exists():
        return
    saved = load_config(path)
    for dotted, value in combo.items():
        section, key = dotted.split(".", 1)
        have = getattr(getattr(saved, section), key)
        if have != value:
            raise ConfigError(f"{path}: grid trial {trial.name} trained with {dotted}={json.dumps(have)}, but the "
                              f"study's grid now gives it {json.dumps(value)}: the grid's values changed since; "
                              f"remove {study_dir / 'runs'}/grid_* (and grid.json) to search again")


def choose(study: Study, trials: list[PlannedRun], study_dir: Path) -> dict[str, Any]:
    """Read the finished trials, pick the best combination per (size, arm) and write ``grid.json``:
    ``{"choices": {size: {arm or "*": overrides}}, "trials": [...]}`` ("*": the tuned arm's choice,
    used by the arms not searched at that size)."""
    assert study.grid is not None
    combos = combinations(study)
    tuned = grid_arm(study).name
    rows: list[dict[str, Any]] = []
    best: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    for t in trials:
        k = int(t.name.rsplit("_", 1)[1])
        _check_values(t, combos[k], study_dir)
        value = final_metric(t.folder(study_dir), t.total_iters, study.grid.metric)
        rows.append({"run": t.name, "size": str(t.size), "arm": t.arm, "values": combos[k], study.grid.metric: value})
        if value is None:
            continue
        key = (str(t.size), t.arm)
        if key not in best or value > best[key][0]:  # ties: the first combination listed
            best[key] = (value, combos[k])
    missing = [r["run"] for r in rows if r[study.grid.metric] is None]
    if missing:
        raise RuntimeError(f"grid trials without a final {study.grid.metric}: {missing}")
    choices: dict[str, dict[str, dict[str, Any]]] = {}
    for (size, arm), (_, values) in best.items():
        choices.setdefault(size, {})["*" if arm == tuned else arm] = values
    out = {"metric": study.grid.metric, "tuned_arm": tuned, "schedule": trials[0].schedule if trials else None,
           "seed": study.seeds[0], "choices": choices, "trials": rows}
    atomic_write_text(study_dir / "grid.json", json.dumps(out, indent=1))
    for size, per_arm in choices.items():
        for arm, values in per_arm.items():
            logger.info(f"grid at {size} images: {tuned if arm == '*' else arm} chose "
                        + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                        + (" (applied to every arm not searched there)" if arm == "*" else ""))
    return out


def load_choices(study_dir: Path) -> dict[str, dict[str, dict[str, Any]]] | None:
    path = study_dir / "grid.json"
    return json.loads(path.read_text())["choices"] if path.exists() else None


def report_lines(study_dir: Path) -> list[str]:
    """The report's section: every trial's result and what each size uses."""
    path = study_dir / "grid.json"
    if not path.exists():
        return []
    g = json.loads(path.read_text())
    metric = g["metric"]
    lines = ["", "## Hyper-parameter grid (the paper's small-data protocol, Sec. 5.2)", "",
             f"Searched on `{g['tuned_arm']}` at schedule {g['schedule']}, seed {g['seed']}, by final {metric} on "
             "the validation set; the chosen values are used by every arm at that size (an arm searched on its own "
             "uses its own choice).", "",
             "| data | arm | values | " + metric + " | chosen |", "|---|---|---|---|---|"]
    for r in g["trials"]:
        per = g["choices"].get(r["size"], {})
        mine = per.get(r["arm"], per.get("*") if r["arm"] == g["tuned_arm"] else None)  # the choice it competed for
        chosen = "**yes**" if mine == r["values"] else ""
        vals = ", ".join(f"{k.split('.')[-1]}={json.dumps(v)}" for k, v in r["values"].items())
        ap = "-" if r[metric] is None else f"{r[metric]:.1f}"
        lines.append(f"| {r['size']} | {r['arm']} | {vals} | {ap} | {chosen} |")
    return lines
