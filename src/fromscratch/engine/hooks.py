"""Hooks of the training loop (detectron2's ``HookBase``): what happens around ``Trainer.train_step``.

Each hook gets ``self.trainer`` when registered and may act at ``before_train``, ``before_step``,
``after_forward`` (return False to skip this step's update), ``after_step`` and ``after_train``
(always called, also when the loop stops on an exception). ``default_hooks`` gives the order that
``fromscratch train`` runs them in: evaluate, decide an early stop, write metrics (then results.csv and the
trackers of engine/trackers.py, which read them), keep the best model, checkpoint, then honour a stop
signal, so a checkpoint never precedes the metrics lines it covers.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
from typing import TYPE_CHECKING, Any

import torch

from fromscratch import comm
from fromscratch.config import Config
from fromscratch.engine import checkpoint as ckpt
from fromscratch.engine.logging import MetricLogger, read_metrics_lines
from fromscratch.errors import FromScratchError, Stopped
from fromscratch.evaluation.predict import evaluate_dataset, predict
from fromscratch.evaluation.tta import tta_spec
from fromscratch.utils import atomic_write_text

if TYPE_CHECKING:
    from fromscratch.engine.trainer import Trainer

logger = logging.getLogger(__name__)

DIVERGENCE_HINTS = ("no normalization (norm=none) from scratch, or BN with small per-process batches "
                    "(use GN or SyncBN: Detectron #665, #53); an LR too high for the batch, or no warm-up "
                    "(train.warmup_iters); try train.clip_grad_norm")


def first_ap(metrics: dict[str, Any]) -> float:
    """The AP of the first IoU type in an evaluation's metrics (box AP for COCO, mAP for VOC), the number
    the best checkpoint and early stopping watch. Other keys of a metrics.jsonl line are skipped."""
    return next(v["AP"] for v in metrics.values() if isinstance(v, dict) and "AP" in v)


class HookBase:
    trainer: Trainer

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_forward(self, iteration: int, values: dict[str, float], targets: list[dict]) -> bool:
        """Called with the (process-averaged) losses before the backward pass; False skips the update."""
        return True

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class EvalHook(HookBase):
    """COCO AP (or VOC mAP) on ``data.val`` every ``period`` iterations and at the end; detections are
    kept in ``eval/detections_XXXXXXX.json``, the final numbers in ``eval/metrics.json``."""

    def __init__(self, period: int) -> None:
        self.period = period

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """Predict on the validation set (sharded over processes) and score it on rank 0."""
        tr = self.trainer
        assert tr.val_ds is not None
        cfg = tr.cfg
        results = predict(tr.model, tr.val_ds, tr.device, cfg.data.num_workers, cfg.eval.max_images, tta_spec(cfg))
        if not comm.is_main():
            return {}
        metrics = evaluate_dataset(tr.val_ds.head(cfg.eval.max_images), results, cfg.model.meta_arch, cfg.eval.backend)
        atomic_write_text(tr.out / "eval" / f"detections_{iteration:07d}.json", json.dumps(results))
        return metrics

    def after_step(self) -> None:
        tr = self.trainer
        if tr.val_ds is not None and ((self.period and tr.done % self.period == 0) or tr.is_last):
            tr.metrics = comm.broadcast_object(self.evaluate(tr.done))  # every rank decides alike
            tr.metrics_iteration = tr.done

    def after_train(self) -> None:
        tr = self.trainer
        if comm.is_main() and tr.metrics and tr.is_last:
            atomic_write_text(tr.out / "eval" / "metrics.json", json.dumps(tr.metrics, indent=1))


class EarlyStopping(HookBase):
    """Stop when val AP (first IoU type) has not improved by more than ``min_delta`` for ``patience``
    evaluations, but never in the first ``grace`` fraction of the run: a scratch run starts slowly and
    its early plateau is not its end. The stop is a line in metrics.jsonl (``"type": "early_stop"``), a
    final checkpoint and ``early_stopped.json``, which a study reads as "this run is complete"."""

    def __init__(self, patience: int, min_delta: float, grace: float) -> None:
        self.patience, self.min_delta, self.grace = patience, min_delta, grace
        self.best, self.best_iter, self.waited = -math.inf, 0, 0

    def before_train(self) -> None:
        """A resumed (or branched) run replays the evaluations logged up to its checkpoint, so it decides
        as the uninterrupted run would; one that had already stopped stops again at once."""
        tr = self.trainer
        path = tr.out / "metrics.jsonl"
        lines = read_metrics_lines(path)
        for line in (x for x in lines if x["iteration"] <= tr.start_iter):
            if line["type"] == "early_stop":
                tr.stop_reason = line
            elif line["type"] == "eval":
                self._observe(line["iteration"], first_ap(line))

    def _observe(self, iteration: int, ap: float) -> bool:
        """Count one evaluation; True when the run should stop here."""
        if ap > self.best + self.min_delta:
            self.best, self.best_iter, self.waited = ap, iteration, 0
            return False
        self.waited += 1
        return self.waited >= self.patience and iteration >= self.grace * self.trainer.plan.total_iters

    def after_step(self) -> None:
        tr = self.trainer
        if tr.metrics_iteration != tr.done or not tr.metrics or tr.is_last:
            return
        ap = first_ap(tr.metrics)
        if self._observe(tr.done, ap):
            tr.stop_reason = {"type": "early_stop", "iteration": tr.done, "best_AP": self.best,
                              "best_iteration": self.best_iter, "patience": self.patience}
            tr.events.append(tr.stop_reason)
            logger.info(f"early stop at iteration {tr.done}: val AP {ap:.2f}, best {self.best:.2f} at iteration "
                        f"{self.best_iter}, no gain over {self.min_delta} for {self.waited} evaluations")

    def after_train(self) -> None:
        tr = self.trainer
        if tr.stop_reason and comm.is_main():
            atomic_write_text(tr.out / "early_stopped.json", json.dumps(tr.stop_reason, indent=1))


class MetricsWriter(HookBase):
    """metrics.jsonl, TensorBoard and the progress bar (engine/logging.py), on rank 0."""

    def before_train(self) -> None:
        tr = self.trainer
        self.log = MetricLogger(tr.out, tr.plan.total_iters, tr.start_iter, comm.is_main(), tr.cfg.train.log_period)

    def after_step(self) -> None:
        tr = self.trainer
        self.log.step(tr.done, tr.values, tr.plan.lr_at(tr.iter), tr.step_time, tr.data_time, tr.batch_images,
                      vars(tr.samples), last=tr.is_last)
        if tr.metrics_iteration == tr.done:
            self.log.eval(tr.done, tr.metrics, vars(tr.samples))
        for event in tr.events:
            self.log.event(event)
        tr.events.clear()

    def after_train(self) -> None:
        self.log.close()


class BestCheckpointer(HookBase):
    """``model_best.pth``: the weights with the best validation AP (first IoU type) so far."""

    def before_train(self) -> None:
        path = self.trainer.out / "model_best.pth"
        self.best = -1.0
        if self.trainer.resume and path.exists():
            try:
                self.best = float(ckpt.load_checkpoint(path).get("AP", -1.0))
            except FromScratchError as e:  # truncated: the next evaluation writes it again
                logger.warning(f"--resume: {path} cannot be loaded ({e}); it is replaced at the next evaluation")

    def after_step(self) -> None:
        tr = self.trainer
        if tr.metrics_iteration != tr.done or not tr.metrics:
            return
        ap = first_ap(tr.metrics)
        if ap > self.best and comm.is_main():
            ckpt.save_checkpoint(tr.out / "model_best.pth", {"model": tr.model.state_dict(), "iteration": tr.done,
                                                            "AP": ap})
        self.best = max(ap, self.best)


class PeriodicCheckpointer(HookBase):
    """A checkpoint every ``train.checkpoint_period`` iterations, at each of ``train.checkpoint_at`` (a
    study's branch points) and at the end; the newest ``keep_checkpoints`` are kept."""

    def after_step(self) -> None:
        tr = self.trainer
        t = tr.cfg.train
        if (t.checkpoint_period and tr.done % t.checkpoint_period == 0) or tr.done in t.checkpoint_at or tr.is_last:
            tr.save(tr.done)


class StopOnSignal(HookBase):
    """SIGTERM / SIGINT (a scheduler's preemption, Ctrl-C) set a flag; at the end of the iteration the
    run checkpoints and stops (exit 130 from the CLI) with the command that resumes it. SIGUSR2 (what a
    SLURM job launched through submitit gets before its time limit or on preemption) does the same,
    then hands the signal to the handler that was there before: submitit's requeues the job, which
    resumes from that checkpoint. Across processes the flag is all-reduced, so every rank stops at the
    same iteration."""

    SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR2", None)) if s is not None)

    def before_train(self) -> None:
        self.flag = False
        self.received: int | None = None
        self.previous: dict = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.received = self.received or signum

    def requested(self) -> bool:
        if not comm.is_dist():
            return self.flag
        f = torch.tensor([float(self.flag)], device=self.trainer.device)  # NCCL reduces CUDA tensors only
        torch.distributed.all_reduce(f)
        return bool(f.item())

    def after_step(self) -> None:
        tr = self.trainer
        if tr.is_last or not self.requested():
            return
        path = ckpt.checkpoint_path(tr.out, tr.done) if tr.last_saved == tr.done else tr.save(tr.done)
        then = self.previous.get(getattr(signal, "SIGUSR2", None)) if self.received == getattr(signal, "SIGUSR2", -1) \
            else None
        if callable(then):  # submitit's handler: requeue the job and exit (it returns on ranks > 0)
            logger.info(f"SIGUSR2: checkpoint {path} written; handing over to the job's requeue handler")
            self.after_train()
            then(self.received, None)
        raise Stopped(f"stopped by signal at iteration {tr.done}; checkpoint {path}. Resume with: "
                      f"fromscratch train <config> [overrides] --resume  (output_dir={tr.out})")

    def after_train(self) -> None:
        for s, h in getattr(self, "previous", {}).items():  # none set when an earlier before_train failed
            signal.signal(s, h)


class DivergenceGuard(HookBase):
    """A non-finite loss: skip the update (``train.skip_nonfinite_steps``), or save the state before
    this step and stop with the iteration, each loss, the LR, the images and the known causes."""

    def after_forward(self, iteration: int, values: dict[str, float], targets: list[dict]) -> bool:
        if math.isfinite(sum(values.values())):
            return True
        tr = self.trainer
        if tr.cfg.train.skip_nonfinite_steps:
            logger.warning(f"iteration {iteration + 1}: non-finite loss, step skipped (train.skip_nonfinite_steps)")
            return False
        path = ckpt.checkpoint_path(tr.out, iteration)
        if tr.last_saved != iteration:  # the state before this step: the last good one (keep a periodic one)
            path = tr.save(iteration)
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise FromScratchError(
            f"non-finite loss at iteration {iteration + 1}: {detail}; lr={tr.plan.lr_at(iteration):.4g}; images "
            f"{[t['image_id'] for t in targets]}. Last good state saved to {path}. Known causes: {DIVERGENCE_HINTS}")


def default_hooks(cfg: Config) -> list[HookBase]:
    """The hooks of ``fromscratch train``, in the order they run after each step."""
    t = cfg.train
    early = [EarlyStopping(t.early_stop_patience, t.early_stop_min_delta, t.early_stop_grace)] \
        if t.early_stop_patience else []
    from fromscratch.engine.trackers import ResultsCsv, tracker_hooks  # they import HookBase from here

    return [DivergenceGuard(), EvalHook(t.eval_period), *early, MetricsWriter(), ResultsCsv(), *tracker_hooks(cfg),
            BestCheckpointer(), PeriodicCheckpointer(), StopOnSignal()]

