"""The training loop: a ``Trainer`` whose public ``train_step`` does one SGD iteration, and hooks
(engine/hooks.py) for everything around it: evaluation, checkpoints, the best model, metric writers,
stop-on-signal and divergence. The model is detectron2's ``TrainerBase``/``HookBase``.

One run is one folder (docs/design.md, "The run folder"): ``config.yaml`` (resolved, written first),
``metrics.jsonl``, TensorBoard events, ``model_XXXXXXX.pth`` checkpoints, ``model_best.pth`` and
``eval/``. Resuming restores model, optimizer, samples seen and RNG states from the newest checkpoint;
the loader needs no state (the batch of iteration i is a function of (seed, i)), so a resumed run is
bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fromscratch import comm
from fromscratch.config import (
    RESUME_MAY_CHANGE,
    Config,
    config_changes,
    dump_config,
    load_yaml,
    may_change_on_resume,
)
from fromscratch.data.build import build_datasets, build_train_loader
from fromscratch.engine import checkpoint as ckpt
from fromscratch.engine.hooks import HookBase, default_hooks
from fromscratch.engine.optim import build_optimizer
from fromscratch.engine.schedule import make_plan
from fromscratch.errors import ConfigError, FromScratchError
from fromscratch.evaluation.predict import ap_table
from fromscratch.log import setup_logging
from fromscratch.models.build import build_model
from fromscratch.utils import FolderLock, atomic_write_text, sha256_prefix

logger = logging.getLogger(__name__)


@dataclass
class Samples:
    """Samples seen (the paper's Fig. 2 accounting): images, instances and pixels."""

    images: int = 0
    instances: int = 0
    pixels: int = 0

    def add(self, other: Samples) -> None:
        self.images += other.images
        self.instances += other.instances
        self.pixels += other.pixels


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_output(cfg: Config, resume: bool) -> tuple[Path, FolderLock | None]:
    """Create ``output_dir`` (refusing one that cannot be written, or holds a run unless resuming), take
    its lock (one writer per run folder), check a resumed run's config against the saved one, and
    write the resolved config into it first. Returns the folder and the lock (rank 0) to release."""
    out = Path(cfg.output_dir)
    lock = None
    if comm.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output_dir {out}: not writable ({e.strerror})") from None
        lock = FolderLock(out).acquire()
        try:
            refuse_unless_resuming(out, resume)
            if resume and ckpt.list_checkpoints(out):
                check_resume_config(out / "config.yaml", cfg)
            atomic_write_text(out / "config.yaml", dump_config(cfg), "run config")
        except BaseException:
            lock.release()
            raise
    comm.barrier()
    return out, lock


def refuse_unless_resuming(out: Path, resume: bool) -> None:
    """A folder that holds checkpoints is only trained into again with --resume."""
    if ckpt.list_checkpoints(out) and not resume:
        raise ConfigError(f"output_dir {out} already holds checkpoints: pass --resume to continue that run, or "
                          "choose another output_dir")


def check_resume_config(saved_path: Path, cfg: Config) -> None:
    """Refuse to resume a run under another config (listing every key that differs from the saved
    ``config.yaml``), except keys in ``RESUME_MAY_CHANGE``, whose changes are logged."""
    if not saved_path.exists():
        logger.warning(f"--resume: {saved_path} is missing; cannot check that the config is the run's")
        return
    saved = load_yaml(saved_path, "run config")
    changes = config_changes(saved if isinstance(saved, dict) else {}, cfg)
    refused = [c for c in changes if not may_change_on_resume(c[0])]
    for key, old, new in changes:
        if may_change_on_resume(key) and key != "output_dir":
            logger.info(f"--resume: {key} changed from {old!r} to {new!r} (allowed on resume)")
    if refused:
        lines = "\n  ".join(f"{k}: {old!r} in the run, {new!r} now" for k, old, new in refused)
        raise ConfigError(f"--resume {saved_path.parent}: the run was trained with another config; these keys "
                          f"differ from {saved_path}:\n  {lines}\nResume with the run's values (drop these "
                          "overrides or edits), or train into a new output_dir. Keys that may change on resume: "
                          f"{', '.join(RESUME_MAY_CHANGE)}.")


def init_line(model: nn.Module) -> str:
    """What the run starts from: scratch, or a weights file with its hash and what matched."""
    rep = getattr(model, "load_report", None)
    if rep is None:
        return "init: scratch (random MSRA init, no pre-trained weights)"
    return (f"init: pre-trained trunk from {rep.source} (sha256 {sha256_prefix(Path(rep.source))}): "
            f"{len(rep.matched)} tensors matched, {len(rep.missing)} missing, {len(rep.unexpected)} unexpected, "
            f"{len(rep.shape_mismatch)} shape mismatches")


def _batch_samples(images: Sequence[torch.Tensor], targets: Sequence[dict], device: torch.device) -> Samples:
    s = torch.tensor([len(images), sum(len(t["boxes"]) for t in targets),
                      sum(im.shape[-2] * im.shape[-1] for im in images)], dtype=torch.float64, device=device)
    if comm.is_dist():
        torch.distributed.all_reduce(s)
    return Samples(*(int(v) for v in s.tolist()))


def _reduce(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss values averaged over processes (what is logged and checked), so every rank agrees."""
    vals = torch.stack([v.detach().float() for v in losses.values()])
    if comm.is_dist():
        torch.distributed.all_reduce(vals)
        vals /= comm.world_size()
    return dict(zip(losses, vals.tolist()))


class Trainer:
    """Set up a run from a config (device, data, schedule, output folder, model, optimizer, resume,
    DDP), then ``train()``: the loop calls ``train_step`` and the hooks.

    Hooks see the trainer: ``iter`` (the 0-based iteration being run), ``done`` (iterations completed),
    ``values`` (the last step's process-averaged losses), ``step_time``/``data_time``, ``samples``,
    ``metrics`` (the last evaluation's numbers) and ``save(iteration)``.
    """

    def __init__(self, cfg: Config, resume: bool = False, hooks: list[HookBase] | None = None) -> None:
        setup_logging()
        self.cfg, self.resume = cfg, resume
        self.device = comm.pick_device(cfg.train.device)
        comm.init_from_env(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA (GradScaler); use train.amp=bf16 on CPU")
        self.train_ds, self.val_ds = build_datasets(cfg.data)  # every check before any model is built
        self.plan = make_plan(cfg.train, len(self.train_ds.records))
        self.out, self.lock = prepare_output(cfg, resume)
        try:  # from here on the run folder is locked: any failure releases it
            self._build(hooks)
        except BaseException:
            self.close()
            raise

    def _build(self, hooks: list[HookBase] | None) -> None:
        """Model, optimizer, state, resume, DDP and hooks (after the run folder is locked)."""
        cfg, resume = self.cfg, self.resume
        seed_all(cfg.train.seed)  # same init on every process
        self.model = build_model(cfg, cfg.model.num_classes or self.train_ds.num_classes).to(self.device)
        self._log_init()
        self.optimizer = build_optimizer(self.model, self.plan.base_lr, cfg.train.momentum, cfg.train.weight_decay,
                                         cfg.train.weight_decay_norm)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
        self.start_iter, self.iter, self.done = 0, 0, 0
        self.samples = Samples()
        self.values: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.metrics_iteration = -1  # the iteration self.metrics were measured at
        self.batch_images = 0
        self.last_saved = -1  # the iteration of the newest checkpoint this process wrote (same on every rank)
        self.events: list[dict[str, Any]] = []  # extra metrics.jsonl lines of this step (hooks add them)
        self.stop_reason: dict[str, Any] | None = None  # set by a hook to end the run after this step
        self.step_time = self.data_time = 0.0
        if resume:
            self._resume()
        else:  # a fresh run in a folder without checkpoints: lines of an earlier failed try are dropped
            ckpt.truncate_metrics(self.out / "metrics.jsonl", 0, comm.is_main())
        self.ddp = self._wrap_ddp()
        self.hooks: list[HookBase] = []
        self.register_hooks(default_hooks(cfg) if hooks is None else hooks)

    # ------------------------------------------------------------------ set-up

    def _log_init(self) -> None:
        logger.info(init_line(self.model))
        rep = getattr(self.model, "load_report", None)
        if rep is not None and (rep.missing or rep.unexpected or rep.shape_mismatch):
            logger.info(rep.summary())

    def _resume(self) -> None:
        """Restore the newest checkpoint that loads; an unreadable newer one (truncated by a full disk or
        a bad copy) is set aside as ``*.corrupt`` with the reason logged, never deleted."""
        path, state, skipped = ckpt.load_newest(self.out)
        for bad, why in skipped:
            if comm.is_main():
                bad.rename(bad.with_name(bad.name + ".corrupt"))
            logger.warning(f"--resume: {bad.name} cannot be loaded ({why}); set aside as {bad.name}.corrupt, "
                           "trying the next older checkpoint")
        if state is None:
            if skipped:
                raise FromScratchError(f"--resume: none of the checkpoints in {self.out} can be loaded "
                                       f"({', '.join(p.name for p, _ in skipped)}); see the reasons above")
            logger.info(f"--resume: no checkpoint in {self.out}, starting from iteration 0")
            ckpt.truncate_metrics(self.out / "metrics.jsonl", 0, comm.is_main())
            return
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise FromScratchError(f"--resume: {path} does not fit the model of this config: "
                                   f"{str(e).splitlines()[0]}") from None
        self.start_iter = self.done = int(state["iteration"])
        self.samples = Samples(**state["samples"])
        ckpt.set_rng_state(state["rng"])
        ckpt.truncate_metrics(self.out / "metrics.jsonl", self.start_iter, comm.is_main())
        logger.info(f"resumed from {path} at iteration {self.start_iter}" +
                    (f" (after skipping {len(skipped)} unreadable newer checkpoint(s))" if skipped else ""))

    def close(self) -> None:
        """Release the run folder's lock (``train()`` does it at its end; call it for a Trainer that is
        set up but not trained)."""
        if self.lock is not None:
            self.lock.release()

    def _wrap_ddp(self) -> nn.Module:
        """The module the step calls: DDP around the model when torchrun started several processes."""
        if not comm.is_dist():
            return self.model
        cuda = self.device.type == "cuda"
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if cuda else None,
            find_unused_parameters=self.cfg.model.cascade_from_iter is not None)  # stages 2+ idle until then

    def register_hooks(self, hooks: list[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    # ------------------------------------------------------------------ the step and the loop

    def save(self, iteration: int) -> Path:
        """Checkpoint the state after ``iteration`` iterations (atomic; rank 0 writes, all wait)."""
        path = ckpt.checkpoint_path(self.out, iteration)
        if comm.is_main():
            ckpt.save_checkpoint(path, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                        "iteration": iteration, "plan": self.plan.to_dict(),
                                        "samples": vars(self.samples).copy(), "rng": ckpt.rng_state()})
            ckpt.prune(self.out, self.cfg.train.keep_checkpoints,
                       {ckpt.checkpoint_path(self.out, i) for i in self.cfg.train.checkpoint_at})
        comm.barrier()
        self.last_saved = iteration
        return path

    def _set_lr(self, iteration: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.plan.lr_at(iteration)
        k = self.cfg.model.cascade_from_iter
        if k is not None:  # one stage until iteration k, then the whole cascade (a function of it: resume stays exact)
            self.model.roi_heads.active_stages = 1 if iteration < k else len(self.cfg.model.roi.cascade_ious)

    def train_step(self, iteration: int, images: Sequence[torch.Tensor], targets: Sequence[dict]) -> dict[str, float]:
        """One SGD iteration at the schedule's LR on this process's share of the batch (uint8 CHW
        images, torchvision targets); returns the loss values averaged over processes. A hook's
        ``after_forward`` may veto the update (a non-finite loss skipped)."""
        self._set_lr(iteration)
        imgs = [im.to(self.device, non_blocking=True).float().div_(255) for im in images]
        tgts = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            losses = self.ddp(imgs, tgts)
        self.samples.add(_batch_samples(imgs, tgts, self.device))
        values = _reduce(losses)
        if not all([h.after_forward(iteration, values, tgts) for h in self.hooks]):
            return values
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return values

    def train(self) -> dict[str, Any]:
        """Train to the end of the schedule; returns the final metrics and where the files are."""
        loader = build_train_loader(self.cfg, self.train_ds, self.start_iter, self.plan.total_iters,
                                    comm.rank(), comm.world_size())
        self.model.train()
        try:
            for h in self.hooks:
                h.before_train()
            tic = time.perf_counter()
            for it, (images, targets) in enumerate([] if self.stop_reason else loader, start=self.start_iter):
                self.iter, self.data_time = it, time.perf_counter() - tic
                for h in self.hooks:
                    h.before_step()
                self.values = self.train_step(it, images, targets)
                self.done, self.step_time = it + 1, time.perf_counter() - tic
                self.batch_images = len(images) * comm.world_size()
                for h in self.hooks:
                    h.after_step()
                if self.stop_reason:
                    break
                tic = time.perf_counter()
        finally:
            try:
                self._after_train()
            finally:
                self.close()
        return {"output_dir": str(self.out), "iterations": self.done, "metrics": self.metrics,
                "samples": vars(self.samples), "table": ap_table(self.metrics) if self.metrics else ""}

    def _after_train(self) -> None:
        """Every hook's ``after_train``, even when one fails (signal handlers must be restored); the first
        failure is raised after all have run, unless the loop is already raising."""
        import sys

        failed: BaseException | None = None
        for h in self.hooks:
            try:
                h.after_train()
            except Exception as e:  # noqa: BLE001 - the others must still run
                logger.warning(f"{type(h).__name__}.after_train failed: {e}")
                failed = failed or e
        if failed is not None and sys.exc_info()[0] is None:
            raise failed

    @property
    def is_last(self) -> bool:
        """This step ends the run: the schedule's last iteration, or a hook asked to stop here."""
        return self.done == self.plan.total_iters or self.stop_reason is not None


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Set up a run of ``cfg`` with the default hooks and train it (what ``fromscratch train`` does)."""
    return Trainer(cfg, resume).train()

