"""The training loop: step, log, periodic evaluation, checkpoint; one run = one folder.

The folder (shared/DESIGN.md): ``config.yaml`` (resolved, written first), ``metrics.jsonl`` (one
object per logged iteration, ``"type": "train"``, and per evaluation, ``"type": "eval"``: the
convergence curve the study plots), TensorBoard events, ``model_XXXXXXX.pth`` checkpoints and
``eval/`` (final detections and AP).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fromscratch.config import Config, dump_config, has_masks
from fromscratch.data.loader import train_loader
from fromscratch.data.records import Dataset
from fromscratch.data.sources import load_dataset, load_sources
from fromscratch.data.transforms import TrainTransform, keypoint_flip_map
from fromscratch.engine import checkpoint as ckpt
from fromscratch.engine import distributed as D
from fromscratch.engine.optim import build_optimizer
from fromscratch.engine.schedule import Plan, make_plan
from fromscratch.errors import ConfigError, FromScratchError, Stopped
from fromscratch.evaluation.predict import ap_table, evaluate_dataset, predict
from fromscratch.evaluation.tta import tta_spec
from fromscratch.models.build import build_model
from fromscratch.utils import atomic_write_text

DIVERGENCE_HINTS = ("no normalization (norm=none) from scratch, or BN with small per-process batches "
                    "(use GN or SyncBN: Detectron #665, #53); an LR too high for the batch, or no warm-up "
                    "(train.warmup_iters); try train.clip_grad_norm")


@dataclass
class Samples:
    """Samples seen (the paper's Fig. 2 accounting): images, instances and pixels."""

    images: int = 0
    instances: int = 0
    pixels: int = 0

    def add(self, other: "Samples") -> None:
        self.images += other.images
        self.instances += other.instances
        self.pixels += other.pixels


@dataclass
class Run:
    cfg: Config
    out: Path
    device: torch.device
    train_ds: Dataset
    val_ds: Dataset | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: Plan
    start_iter: int = 0
    samples: Samples = field(default_factory=Samples)
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: Config) -> tuple[Dataset, Dataset | None]:
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is not set: give a COCO json or VOC folder")
    common = dict(fmt=d.format, image_root=d.image_root, on_invalid=d.on_invalid, check_images=d.check_images,
                  allow_outside_root=d.allow_outside_root)
    train = load_sources(d.train, subset=d.subset, **common)
    val = load_dataset(d.val, **common) if d.val else None
    return train, val


def prepare_output(cfg: Config, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    if D.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output_dir {out}: not writable ({e.strerror})") from None
        if ckpt.list_checkpoints(out) and not resume:
            raise ConfigError(f"output_dir {out} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another output_dir")
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    D.barrier()
    return out


def setup(cfg: Config, resume: bool = False) -> Run:
    device = pick_device(cfg.train.device)
    D.init_from_env(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA (GradScaler); use train.amp=bf16 on CPU")
    train_ds, val_ds = load_data(cfg)  # every check before any model is built
    plan = make_plan(cfg.train, len(train_ds.records))
    out = prepare_output(cfg, resume)
    seed_all(cfg.train.seed)  # same init on every process
    num_classes = cfg.model.num_classes or train_ds.num_classes
    model = build_model(cfg, num_classes).to(device)
    opt = build_optimizer(model, plan.base_lr, cfg.train.momentum, cfg.train.weight_decay,
                          cfg.train.weight_decay_norm)
    run = Run(cfg, out, device, train_ds, val_ds, model, opt, plan)
    if resume:
        _resume(run)
    if D.is_dist():
        run.model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None,
                                                        # stages 2+ idle before cascade_from_iter
                                                        find_unused_parameters=cfg.model.cascade_from_iter is not None)
    return run


def _resume(run: Run) -> None:
    found = ckpt.list_checkpoints(run.out)
    if not found:
        print(f"--resume: no checkpoint in {run.out}, starting from iteration 0")
        return
    state = ckpt.load_checkpoint(found[-1])
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.start_iter = int(state["iteration"])
    run.samples = Samples(**state["samples"])
    ckpt.set_rng_state(state["rng"])
    _truncate_metrics(run.out / "metrics.jsonl", run.start_iter)
    print(f"resumed from {found[-1]} at iteration {run.start_iter}")


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop lines a killed run logged after its last checkpoint: they will be logged again."""
    if not path.exists() or not D.is_main():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["iteration"] <= iteration]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def save(run: Run, iteration: int) -> Path:
    path = ckpt.checkpoint_path(run.out, iteration)
    if D.is_main():
        model = run.model.module if hasattr(run.model, "module") else run.model
        ckpt.save_checkpoint(path, {"model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                    "iteration": iteration, "plan": run.plan.to_dict(),
                                    "samples": vars(run.samples).copy(), "rng": ckpt.rng_state()})
        ckpt.prune(run.out, run.cfg.train.keep_checkpoints,
                   {ckpt.checkpoint_path(run.out, i) for i in run.cfg.train.checkpoint_at})
    D.barrier()
    return path


def evaluate_run(run: Run, iteration: int) -> dict[str, Any]:
    assert run.val_ds is not None
    model = run.model.module if hasattr(run.model, "module") else run.model
    results = predict(model, run.val_ds, run.device, run.cfg.data.num_workers, run.cfg.eval.max_images,
                      tta_spec(run.cfg))
    metrics: dict[str, Any] = {}
    if D.is_main():
        n = run.cfg.eval.max_images
        ds = run.val_ds.subset([r.image_id for r in run.val_ds.records[:n]]) if n else run.val_ds
        metrics = evaluate_dataset(ds, results, run.cfg.model.meta_arch, run.cfg.eval.backend)
        (run.out / "eval").mkdir(exist_ok=True)
        atomic_write_text(run.out / "eval" / f"detections_{iteration:07d}.json", json.dumps(results))
    return metrics


def _batch_samples(images: list[torch.Tensor], targets: list[dict]) -> Samples:
    s = torch.tensor([len(images), sum(len(t["boxes"]) for t in targets),
                      sum(im.shape[-2] * im.shape[-1] for im in images)], dtype=torch.float64)
    if D.is_dist():
        torch.distributed.all_reduce(s)
    return Samples(*(int(v) for v in s.tolist()))


def _reduce(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss values averaged over processes (what is logged and checked), so every rank agrees."""
    vals = torch.stack([v.detach().float() for v in losses.values()])
    if D.is_dist():
        torch.distributed.all_reduce(vals)
        vals /= D.world_size()
    return dict(zip(losses, vals.tolist()))


def _check_finite(run: Run, it: int, values: dict[str, float], targets: list[dict]) -> bool:
    if math.isfinite(sum(values.values())):
        return True
    if run.cfg.train.skip_nonfinite_steps:
        print(f"iteration {it + 1}: non-finite loss, step skipped (train.skip_nonfinite_steps)")
        return False
    path = save(run, it)  # the state before this step: the last good one
    detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    raise FromScratchError(
        f"non-finite loss at iteration {it + 1}: {detail}; lr={run.plan.lr_at(it):.4g}; images "
        f"{[t['image_id'] for t in targets]}. Last good state saved to {path}. Known causes: {DIVERGENCE_HINTS}")


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the end of the iteration and exits.
    Across processes the flag is all-reduced, so every rank stops at the same iteration."""

    def __init__(self) -> None:
        import signal
        import threading

        self.flag = False
        self.previous: dict = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def requested(self) -> bool:
        if not D.is_dist():
            return self.flag
        f = torch.tensor([float(self.flag)])
        torch.distributed.all_reduce(f)
        return bool(f.item())

    def restore(self) -> None:
        import signal

        for s, h in self.previous.items():
            signal.signal(s, h)


def _step(run: Run, it: int, images: list, targets: list, amp: torch.dtype | None, scaler: Any,
          stages: dict[str, float] | None = None) -> dict[str, float]:
    """One SGD iteration at the schedule's LR; returns the (process-averaged) loss values.
    ``stages`` (benchmarks/train_step.py) accumulates seconds spent in forward, backward and optimizer."""
    tick = time.perf_counter() if stages is not None else 0.0
    t = run.cfg.train
    for g in run.optimizer.param_groups:
        g["lr"] = run.plan.lr_at(it)
    k = run.cfg.model.cascade_from_iter
    if k is not None:  # one stage until iteration k, then the whole cascade (a function of it: resume stays exact)
        heads = (run.model.module if hasattr(run.model, "module") else run.model).roi_heads
        heads.active_stages = 1 if it < k else len(run.cfg.model.roi.cascade_ious)
    images = [im.to(run.device, non_blocking=True).float().div_(255) for im in images]
    targets = [{k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in tg.items()} for tg in targets]
    with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        losses = run.model(images, targets)
    run.samples.add(_batch_samples(images, targets))
    values = _reduce(losses)
    if not _check_finite(run, it, values, targets):
        return values
    loss = sum(losses.values())
    if stages is not None:
        tick = _lap(stages, "forward", tick)
    run.optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if stages is not None:
        tick = _lap(stages, "backward", tick)
    if scaler:
        scaler.unscale_(run.optimizer)
    if t.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.clip_grad_norm)
    if scaler:
        scaler.step(run.optimizer)
        scaler.update()
    else:
        run.optimizer.step()
    if stages is not None:
        _lap(stages, "optimizer", tick)
    return values


def _lap(stages: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    stages[name] = stages.get(name, 0.0) + now - since
    return now


def _after_eval(run: Run, done: int, metrics: dict[str, Any], best: float) -> float:
    """Keep ``model_best.pth``: the checkpoint with the best val AP (first IoU type) so far."""
    ap = next(iter(metrics.values()))["AP"] if metrics else -1.0
    if ap > best and D.is_main():
        model = run.model.module if hasattr(run.model, "module") else run.model
        ckpt.save_checkpoint(run.out / "model_best.pth", {"model": model.state_dict(), "iteration": done, "AP": ap})
    return max(ap, best)


def _previous_best(out: Path) -> float:
    path = out / "model_best.pth"
    return float(ckpt.load_checkpoint(path).get("AP", -1.0)) if path.exists() else -1.0


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train to the end of the schedule; returns the final metrics and where the files are."""
    from fromscratch.engine.logging import MetricLogger

    run = setup(cfg, resume)
    d, t = cfg.data, cfg.train
    flip_map = keypoint_flip_map(run.train_ds.keypoint_names) if run.train_ds.keypoint_names else None
    loader = train_loader(run.train_ds, TrainTransform(d.train_scales, d.scale_sampling, d.max_size, d.flip_prob,
                                                       flip_map),
                          t.batch_size, t.seed, run.start_iter, run.plan.total_iters,
                          with_masks=has_masks(cfg.model.meta_arch),
                          with_keypoints=cfg.model.meta_arch == "keypoint_rcnn", num_workers=d.num_workers,
                          group=d.aspect_ratio_grouping, rank=D.rank(), world_size=D.world_size())
    log = MetricLogger(run.out, run.plan.total_iters, run.start_iter, D.is_main(), t.log_period)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    stop = StopRequest()
    run.model.train()
    metrics: dict[str, Any] = {}
    best = _previous_best(run.out) if resume else -1.0
    tic = time.perf_counter()
    try:
        for it, (images, targets) in enumerate(loader, start=run.start_iter):
            data_time = time.perf_counter() - tic
            values = _step(run, it, images, targets, amp, scaler)
            done = it + 1
            log.step(done, values, run.plan.lr_at(it), time.perf_counter() - tic, data_time,
                     len(images) * D.world_size(), vars(run.samples))
            last = done == run.plan.total_iters
            if run.val_ds is not None and ((t.eval_period and done % t.eval_period == 0) or last):
                metrics = evaluate_run(run, done)
                log.eval(done, metrics, vars(run.samples))
                best = _after_eval(run, done, metrics, best)
            periodic = (t.checkpoint_period and done % t.checkpoint_period == 0) or done in t.checkpoint_at
            saved = save(run, done) if periodic or last else None
            if not last and stop.requested():
                path = saved or save(run, done)
                raise Stopped(f"stopped by signal at iteration {done}; checkpoint {path}. Resume with: "
                              f"fromscratch train <config> [overrides] --resume  (output_dir={run.out})")
            tic = time.perf_counter()
    finally:
        stop.restore()
        log.close()
    if D.is_main() and metrics:
        atomic_write_text(run.out / "eval" / "metrics.json", json.dumps(metrics, indent=1))
    return {"output_dir": str(run.out), "iterations": run.plan.total_iters, "metrics": metrics,
            "samples": vars(run.samples), "table": ap_table(metrics) if metrics else ""}
