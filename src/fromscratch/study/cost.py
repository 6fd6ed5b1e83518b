"""What a study will cost, before anything is trained (`fromscratch study STUDY --plan-only`).

Per planned run: the iterations it trains (a branched schedule trains only past its branch point),
the images it sees, its evaluations. Time comes from a short measurement on this machine (a few
training steps of the study's own first run config, and inference on a few validation images, with
the threads each run will have) or from a step time the user states (e.g. measured on a GPU). Wall
time schedules the chains on ``parallel`` workers, longest first, as the runner does.
"""
from __future__ import annotations

import heapq
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fromscratch.config import Config
from fromscratch.study.accounting import fmt
from fromscratch.study.plan import PlannedRun, Study, chains, stages

logger = logging.getLogger(__name__)


@dataclass
class Timing:
    step_s: float  # one training iteration (the whole batch)
    image_s: float  # inference on one validation image
    source: str


@dataclass
class RunCost:
    name: str
    iterations: int
    images: int
    evaluations: int
    seconds: float


def measure(cfg: Config, threads: int | None, steps: int = 4) -> Timing:
    """Time ``steps`` training iterations (after one warm-up) and inference on up to 4 validation
    images of ``cfg``, in a temporary folder, with ``threads`` threads."""
    import torch

    from fromscratch.data.build import build_train_loader
    from fromscratch.engine.trainer import Trainer
    from fromscratch.evaluation.predict import predict

    before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fromscratch-cost-") as tmp:
        tree = cfg.model_dump(mode="json")
        tree["output_dir"] = tmp
        tree["model"]["backbone"]["weights"] = None  # the init does not change the time (a stage may not exist yet)
        tree["train"].update({"threads": threads or cfg.train.threads, "eval_period": 0})
        trainer = Trainer(Config.model_validate(tree), hooks=[])
        try:
            times = []
            loader = build_train_loader(trainer.cfg, trainer.train_ds, 0, steps + 1, num_workers=0)
            for it, (images, targets) in enumerate(loader):
                tic = time.perf_counter()
                trainer.train_step(it, images, targets)
                times.append(time.perf_counter() - tic)
            image_s = 0.0
            if trainer.val_ds is not None:
                n = min(4, len(trainer.val_ds.records))
                tic = time.perf_counter()
                predict(trainer.model, trainer.val_ds, trainer.device, num_workers=0, max_images=n)
                image_s = (time.perf_counter() - tic) / max(1, n)
        finally:
            trainer.close()
            torch.set_num_threads(before)
    step = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    return Timing(step, image_s, f"measured on this machine: median of {steps} training steps of "
                                 f"{cfg.train.batch_size} images, {threads or cfg.train.threads or before} thread(s) "
                                 f"({trainer.device.type})")


def evaluations(cfg: Config, run: PlannedRun) -> int:
    """Evaluations the run makes past its branch point (periodic ones and the final one)."""
    period = cfg.train.eval_period
    points = set(range(period, run.total_iters + 1, period)) if period > 0 else set()
    return len({p for p in points | {run.total_iters} if p > run.branch_iter})


def estimate(runs: list[PlannedRun], configs: dict[str, Config], study: Study, timing: Timing | None,
             val_images: int) -> dict[str, Any]:
    """Per-run and total cost; ``wall_s`` places the chains on ``study.parallel`` workers, longest first."""
    rows = []
    for r in runs:
        cfg = configs[r.name]
        iters = r.total_iters - r.branch_iter
        evals = evaluations(cfg, r)
        n_eval = min(val_images, cfg.eval.max_images or val_images)
        secs = (iters * timing.step_s + evals * n_eval * timing.image_s) if timing else 0.0
        rows.append(RunCost(r.name, iters, iters * cfg.train.batch_size, evals, secs))
    by_name = {c.name: c for c in rows}
    loads = sorted((sum(by_name[r.name].seconds for r in chain) for chain in chains(runs)), reverse=True)
    workers = [0.0] * max(1, study.parallel)
    for load in loads:  # each chain goes to the worker that frees up first (the runner's thread pool)
        heapq.heapreplace(workers, workers[0] + load)
    study_dir = Path(study.output_dir)
    pre = [{"stage": f.name, "method": p.method, "source": p.source, "images_per_epoch": p.max_images,
            "epochs": p.epochs, "image_size": p.image_size}
           for f, (p, _) in stages(study, study_dir, configs[runs[0].name].pretrain).items()]
    return {"runs": [asdict(c) for c in rows], "iterations": sum(c.iterations for c in rows),
            "images": sum(c.images for c in rows), "evaluations": sum(c.evaluations for c in rows),
            "compute_s": sum(c.seconds for c in rows), "wall_s": max(workers) if timing else None,
            "parallel": study.parallel, "timing": asdict(timing) if timing else None, "pretrain_stage": pre,
            "adaptive": study.adaptive}


def hms(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def cost_text(cost: dict[str, Any]) -> str:
    """The plan-only table: one row per run, then the totals and where the time comes from."""
    timed = cost["timing"] is not None
    lines = ["| run | iterations | images seen | evaluations |" + (" est. time |" if timed else ""),
             "|---|---|---|---|" + ("---|" if timed else "")]
    for r in cost["runs"]:
        lines.append(f"| {r['name']} | {r['iterations']:,} | {fmt(r['images'])} | {r['evaluations']} |" +
                     (f" {hms(r['seconds'])} |" if timed else ""))
    lines.append(f"\ntotal: {cost['iterations']:,} iterations, {fmt(cost['images'])} images seen, "
                 f"{cost['evaluations']} evaluations" + (" (at most: an adaptive study trains only what its "
                                                         "verdicts need)" if cost["adaptive"] else ""))
    if timed:
        t = cost["timing"]
        lines.append(f"estimated time: {hms(cost['wall_s'])} wall with {cost['parallel']} run(s) at once "
                     f"({hms(cost['compute_s'])} of training and evaluation in all); {t['step_s']:.3g} s per "
                     f"iteration, {t['image_s']:.3g} s per validation image, {t['source']}")
    for pre in cost["pretrain_stage"]:
        lines.append(f"plus the pre-training stage {pre['stage']} ({pre['method']}): {pre['epochs']} epoch(s) of "
                     f"{pre['images_per_epoch'] or 'all'} {pre['source']} images at {pre['image_size']} px "
                     "(not timed)")
    return "\n".join(lines)


def plan_cost(study_dir: Path, runs: list[PlannedRun], configs: dict[str, Config], study: Study,
              step_time: float | None = None, timed: bool = True) -> str:
    """Estimate, write ``cost.json`` and ``cost.md`` into the study folder and return the table."""
    from fromscratch.data.build import build_dataset
    from fromscratch.utils import atomic_write_text

    first = configs[runs[0].name]
    val = build_dataset(first.data, "val", check_images=False) if first.data.val else None
    val_images = len(val.records) if val is not None else 0
    if step_time is not None:
        timing: Timing | None = Timing(step_time, step_time / first.train.batch_size,
                                       "stated (--step-time); inference per image taken as a step per image")
    elif timed:
        threads = 1 if study.parallel > 1 else None
        logger.info(f"timing a few training steps of {runs[0].name} to estimate the study's time ...")
        timing = measure(first, threads)
    else:
        timing = None
    cost = estimate(runs, configs, study, timing, val_images)
    atomic_write_text(study_dir / "cost.json", json.dumps(cost, indent=1))
    text = cost_text(cost)
    atomic_write_text(study_dir / "cost.md", text + "\n")
    return text
