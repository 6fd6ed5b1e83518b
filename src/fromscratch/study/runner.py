"""`fromscratch study`: write subsets, run the pre-training stage, run every planned run (skipping
complete ones, resuming interrupted ones, branching long schedules from short ones), then report.

Everything lands in one folder: ``study.yaml`` (the study as given), ``plan.json``, ``subsets/``,
``pretrain/``, ``configs/<run>.yaml`` (resolved), ``runs/<run>/`` (run folders) and ``report.md``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from fromscratch.config import Config, dump_config
from fromscratch.data.build import train_image_ids
from fromscratch.data.subsets import choose_subset, write_subset
from fromscratch.engine import checkpoint as ckpt
from fromscratch.errors import FromScratchError
from fromscratch.study.grid import choose, load_choices, plan_trials
from fromscratch.study.plan import (
    PlannedRun,
    Study,
    base_config,
    chains,
    load_study,
    load_suite,
    part_dir,
    plan_runs,
    stages,
)
from fromscratch.utils import FolderLock, atomic_write_text

logger = logging.getLogger(__name__)


def _train_ids(cfg: Config) -> list[int]:
    if not isinstance(cfg.data.train, str) or not cfg.data.train.endswith(".json"):
        raise FromScratchError("a study needs data.train to be a COCO json (set it in the study's overrides)")
    return train_image_ids(cfg.data)


def write_subsets(study: Study, study_dir: Path, ids: list[int]) -> None:
    for size in study.data_sizes:
        if size == "all":
            continue
        path = study_dir / "subsets" / f"train_{size}_seed{study.subset_seed}.json"
        if not path.exists():
            write_subset(path, choose_subset(ids, int(size), study.subset_seed), "data.train", study.subset_seed)


def run_pretrain_stage(study: Study, cfg: Config, study_dir: Path) -> None:
    """Every pre-training stage the arms need (the shared supervised one, each SSL arm's), once."""
    from fromscratch.study.pretrain import pretrain

    for folder, (p, arms) in stages(study, study_dir, cfg.pretrain).items():
        if (folder / "accounting.json").exists():
            continue
        result = pretrain(cfg.model_copy(update={"pretrain": p.model_copy(update={"output": str(folder)})}))
        logger.info(f"pre-training stage {folder.name} ({p.method}, for {', '.join(arms)}): {result['images']:,} "
                    f"images at {result['image_size']} px in {result['wall_time_s']} s, quality "
                    f"{result['val_top1']}")


def is_complete(folder: Path, total: int) -> bool:
    """The run reached its last iteration, or stopped early on its own (train.early_stop_patience)."""
    return ckpt.checkpoint_path(folder, total).exists() or (folder / "early_stopped.json").exists()


def prefix_checkpoint(src: Path, branch_iter: int) -> tuple[Path, int] | None:
    """The shorter run's checkpoint to branch from: the one at its first LR drop, else (a schedule added to the
    study after the shorter run finished, so nobody asked it to keep that one) its latest before the drop.
    Up to the drop both runs train at the same LR on the same (seed, iteration) batches, so either is a
    state the longer run passes through."""
    found = [(p, int(ckpt.PATTERN.match(p.name).group(1))) for p in ckpt.list_checkpoints(src)]
    return max(((p, i) for p, i in found if 0 < i <= branch_iter), key=lambda x: x[1], default=None)


def seed_from_prefix(run: PlannedRun, study_dir: Path) -> None:
    """Start a longer schedule from the shorter run's checkpoint at its first LR drop (or before it)."""
    src = study_dir / "runs" / str(run.branch_from)
    folder = run.folder(study_dir)
    found = prefix_checkpoint(src, run.branch_iter)
    if found is None:
        return  # the prefix is gone: train from 0 (same result, more time)
    prefix_ckpt, at = found
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prefix_ckpt, ckpt.checkpoint_path(folder, at))
    shutil.copyfile(src / "metrics.jsonl", folder / "metrics.jsonl")
    ckpt.truncate_metrics(folder / "metrics.jsonl", at)
    atomic_write_text(folder / "branch.json", json.dumps({"from": run.branch_from, "iteration": at}))


def execute(run: PlannedRun, cfg: Config, study: Study, study_dir: Path) -> str:
    """Train one planned run to its end (resuming what is there), in this process or a subprocess."""
    folder = run.folder(study_dir)
    if is_complete(folder, run.total_iters):
        return f"{run.name}: complete, skipped"
    if run.branch_from and not ckpt.list_checkpoints(folder) and int(os.environ.get("RANK", "0")) == 0:
        seed_from_prefix(run, study_dir)  # other ranks of a multi-process job wait for it in the trainer
    if study.parallel == 1 and study.nproc == 1:
        from fromscratch.engine.trainer import train

        train(cfg, resume=True)
        return f"{run.name}: done"
    cfg_file = study_dir / "configs" / f"{run.name}.yaml"
    launcher = [sys.executable] if study.nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(study.nproc)]
    threads = ["train.threads=1"] if study.parallel > 1 else []
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.txt", "a") as log:
        proc = subprocess.run(launcher + ["-m", "fromscratch", "train", str(cfg_file), *threads, "--resume"],
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise FromScratchError(f"run {run.name} failed (exit {proc.returncode}); see {folder / 'log.txt'}")
    return f"{run.name}: done"


def run_study(path: str | Path, plan_only: bool = False, output_dir: str | Path | None = None,
              step_time: float | None = None, timed: bool = True, wait: bool = True) -> Path:
    """Run a study (or every part of a suite, in order) and return its folder. ``plan_only``: plan, write
    subsets and the cost estimate (``cost.md``; ``step_time`` in s per iteration instead of measuring
    it, or ``timed=False`` for counts only), train nothing."""
    suite = load_suite(path)
    if suite is not None:
        s, base = suite
        out = Path(s.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "suite.json", json.dumps({"suite": s.model_dump(mode="json"),
                                                          "parts": [Path(p).stem for p in s.parts]}, indent=1))
        for part in s.parts:
            logger.info(f"suite {path}: part {part}")
            run_study(base / part, plan_only, part_dir(s, part), step_time, timed, wait)
        return out
    study, base = load_study(path)
    study_dir = Path(output_dir or study.output_dir)
    study = study.model_copy(update={"output_dir": str(study_dir)})
    study_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(study_dir, "study.lock", "study folder"):  # a study started twice: the second refuses
        return _run_locked(path, study, base, study_dir, plan_only, step_time, timed, wait)


def _run_locked(path: str | Path, study: Study, base: Path, study_dir: Path, plan_only: bool,
                step_time: float | None, timed: bool, wait: bool) -> Path:
    atomic_write_text(study_dir / "study.yaml", Path(path).read_text())
    cfg = base_config(study, base)
    ids = _train_ids(cfg)
    write_subsets(study, study_dir, ids)
    planned = study
    if study.adaptive:  # seeds it may add are planned (and their configs written) up front
        extra = [max(study.seeds) + 1 + i for i in range(max(0, study.max_seeds - len(study.seeds)))]
        planned = study.model_copy(update={"seeds": study.seeds + extra})
    trials, trial_configs = plan_trials(study, base, study_dir, len(ids))
    choices = load_choices(study_dir) if study.grid else None  # a grid removed from the study is not applied
    runs, configs = _write_plan(study, planned, base, study_dir, ids, trials, trial_configs, choices)
    if plan_only:
        from fromscratch.study.cost import plan_cost

        plan_cost(study_dir, trials + runs, {**trial_configs, **configs}, planned, step_time, timed)
        return study_dir
    if study.executor == "slurm":
        from fromscratch.study.slurm import run_on_slurm

        def execute_some(some: list[PlannedRun], wait_for_end: bool = False) -> None:
            run_on_slurm(some, study, base, study_dir, study.slurm or cfg.slurm, wait or wait_for_end or study.adaptive)
    else:
        run_pretrain_stage(study, cfg, study_dir)

        def execute_some(some: list[PlannedRun], wait_for_end: bool = False) -> None:
            execute_runs(some, {**trial_configs, **configs}, study, study_dir)
    if trials:  # the grid first: every run at a searched size uses what it chose
        execute_some(trials, True)
        choose(study, trials, study_dir)
        runs, configs = _write_plan(study, planned, base, study_dir, ids, trials, trial_configs,
                                    load_choices(study_dir))
    if study.adaptive:
        from fromscratch.study.adaptive import run_adaptive
        from fromscratch.study.report import round_verdicts

        run_adaptive(study, runs, study_dir, execute_some, lambda names: round_verdicts(study_dir, names))
    else:
        execute_some(runs)
    return study_dir


def _write_plan(study: Study, planned: Study, base: Path, study_dir: Path, ids: list[int], trials: list[PlannedRun],
                trial_configs: dict[str, Config], choices: dict | None) -> tuple[list[PlannedRun], dict[str, Config]]:
    """Plan the runs (with the grid's choices, once it has chosen) and write every resolved config and
    ``plan.json`` (its ``grid_trials`` apart from ``runs``: the report's tables hold runs only)."""
    runs, configs = plan_runs(planned, base, study_dir, len(ids), choices)
    for name, c in {**trial_configs, **configs}.items():  # what each run trains with, resolved: read by
        atomic_write_text(study_dir / "configs" / f"{name}.yaml", dump_config(c))  # subprocess runs and the report
    atomic_write_text(study_dir / "plan.json", json.dumps({"study": study.model_dump(mode="json"),
                                                            "detector": str((base / study.detector).resolve()),
                                                            "train_size": len(ids),
                                                            "runs": [asdict(r) for r in runs],
                                                            "grid_trials": [asdict(t) for t in trials]}, indent=1))
    return runs, configs


def execute_runs(runs: list[PlannedRun], configs: dict[str, Config], study: Study, study_dir: Path) -> None:
    """Train ``runs`` chain by chain (a longer schedule after the run it branches from), longest chains
    first so that ``parallel`` workers finish together."""

    def run_chain(chain: list[PlannedRun]) -> list[str]:
        return [execute(r, configs[r.name], study, study_dir) for r in chain]

    order = sorted(chains(runs), key=lambda c: -sum(r.total_iters - r.branch_iter for r in c))
    if study.parallel == 1:
        for chain in order:
            for m in run_chain(chain):
                logger.info(m)
    else:
        with ThreadPoolExecutor(max_workers=study.parallel) as pool:
            for msgs in pool.map(run_chain, order):
                for m in msgs:
                    logger.info(m)
