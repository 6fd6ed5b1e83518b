"""The paper's schedule rule, rescaled to any batch size and dataset size; linear warm-up.

``Nx`` = N x 90k iterations at 16 images a batch; the LR drops by ``decay_factor`` in the last 60k
and again in the last 20k iterations, whatever N (docs/paper.md, Schedules; note Detectron's own
1x drops at 60k/80k instead). Rescaling keeps the amount of training per image: at batch B the
iteration counts scale by 16/B (detectron2's 9x at batch 64: 202.5k, drops 187.5k/197.5k), and on a
dataset of D images by D/118,287 (1x = 12.17 epochs of COCO train2017; the drops are the last
8.1 and 2.7 epochs), so "3x" means the same epochs on any dataset. ``train.x_iterations`` instead sets 1x
to a number of iterations whatever the batch and data size (drops in the last 2/3 and 2/9 of 1x): the
paper's small-data runs kept iteration counts rather than epochs, and a miniature study sets its unit so.

The length can also be given directly (config.TrainConfig): ``train.epochs`` (iterations =
ceil(epochs x dataset size / batch)), else ``train.iterations``, else ``train.schedule``; the LR drops by
``train.steps`` (iterations), else ``train.step_fractions`` (fractions of the run, as detectron2's LSJ
configs: 8/9 and 26/27), else the rule above counted back from the run's end. Every plan also reads as
the other views: its epochs, and its Nx equivalent (``Plan.nx``).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

from fromscratch.config import TrainConfig
from fromscratch.errors import ConfigError

COCO_TRAIN_IMAGES = 118_287
PAPER_BATCH = 16
ITERS_PER_X = 90_000
LAST_DROPS = (60_000, 20_000)


def parse_multiplier(schedule: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*x\s*", str(schedule))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"train.schedule: expected 'Nx' like '2x' or '0.5x', got {schedule!r}")
    return float(m.group(1))


@dataclass(frozen=True)
class Plan:
    schedule: str
    batch_size: int
    dataset_size: int
    total_iters: int
    steps: tuple[int, ...]
    base_lr: float  # after linear scaling with the batch
    decay_factor: float
    warmup_iters: int
    warmup_factor: float
    rescale_to_dataset: bool = True  # what Nx means for this plan (nx)
    length_from: str = "train.schedule"  # the key that set the length: train.epochs, .iterations or .schedule
    x_iterations: int | None = None  # train.x_iterations: 1x in iterations, whatever the batch and data size

    @property
    def epochs(self) -> float:
        return self.total_iters * self.batch_size / self.dataset_size

    @property
    def nx(self) -> float:
        """The length as the paper's N in Nx: images seen / (90k x 16), on COCO's size when rescaled
        (iterations / train.x_iterations where that defines 1x)."""
        if self.x_iterations:
            return self.total_iters / self.x_iterations
        scale = COCO_TRAIN_IMAGES / self.dataset_size if self.rescale_to_dataset else 1.0
        return self.images / (ITERS_PER_X * PAPER_BATCH) * scale

    @property
    def images(self) -> int:
        return self.total_iters * self.batch_size

    def lr_at(self, iteration: int) -> float:
        """LR of iteration ``iteration`` (0-based): linear warm-up, then x decay at each step."""
        lr = self.base_lr * self.decay_factor ** sum(1 for s in self.steps if iteration >= s)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["epochs"] = self.epochs
        d["nx"] = self.nx
        return d


def paper_iterations(multiplier: float, batch_size: int, dataset_size: int | None,
                     x_iterations: int | None = None) -> tuple[int, tuple[int, int]]:
    """Total iterations and the two drops of ``Nx`` at ``batch_size`` (on ``dataset_size`` images), or
    with 1x = ``x_iterations`` whatever the batch and data size."""
    scale = PAPER_BATCH / batch_size
    if x_iterations is not None:
        scale = x_iterations / ITERS_PER_X
    elif dataset_size is not None:
        scale *= dataset_size / COCO_TRAIN_IMAGES
    total = multiplier * ITERS_PER_X
    steps = (total - LAST_DROPS[0], total - LAST_DROPS[1])
    if multiplier * ITERS_PER_X <= LAST_DROPS[0]:
        raise ConfigError(f"train.schedule={multiplier:g}x is shorter than the paper's last-60k drop window; "
                          "use >= 1x, or give train.iterations and train.steps")
    return max(1, round(total * scale)), tuple(round(s * scale) for s in steps)  # type: ignore[return-value]


def epoch_iterations(epochs: float, dataset_size: int, batch_size: int) -> int:
    """ceil(epochs x dataset_size / batch_size), exact for decimal epochs (0.1 x 1000 / 2 is 50, not 51)."""
    return max(1, math.ceil(Fraction(repr(float(epochs))) * dataset_size / batch_size))


def make_plan(cfg: TrainConfig, dataset_size: int) -> Plan:
    """The schedule of ``cfg`` for ``dataset_size`` training images. Length: train.epochs, else
    train.iterations, else train.schedule; drops: train.steps, else train.step_fractions, else the paper's
    last-60k/20k rule counted back from the end (config.TrainConfig; cross_check refuses two of a kind)."""
    if dataset_size <= 0:
        raise ConfigError("the training set is empty")
    for a, b in (("epochs", "iterations"), ("steps", "step_fractions")):  # cross_check says it at load time
        if getattr(cfg, a) is not None and getattr(cfg, b) is not None:
            raise ConfigError(f"train.{a} and train.{b} are both set: set one of them to null")
    if cfg.epochs is not None and not 0 < cfg.epochs < float("inf"):
        raise ConfigError(f"train.epochs={cfg.epochs}: must be a number > 0")
    total, steps = paper_iterations(parse_multiplier(cfg.schedule), cfg.batch_size,
                                    dataset_size if cfg.rescale_to_dataset else None, cfg.x_iterations)
    if cfg.epochs is not None:
        length, key = epoch_iterations(cfg.epochs, dataset_size, cfg.batch_size), "train.epochs"
        given = f"train.epochs={cfg.epochs:g} ({length} iterations)"
    elif cfg.iterations is not None:
        length, key, given = cfg.iterations, "train.iterations", f"train.iterations={cfg.iterations}"
    else:
        length, key, given = None, "train.schedule", ""
    if cfg.steps is not None:
        steps = tuple(cfg.steps)
    elif cfg.step_fractions is not None:
        steps = tuple(round(f * (length or total)) for f in cfg.step_fractions)
    elif length is not None:  # same rule: drops in the (rescaled) last 60k and 20k iterations
        window = total - steps[0]
        if length <= window:
            raise ConfigError(f"{given} is not longer than the paper's last-60k drop window ({window} iterations "
                              "at this batch and dataset size): give train.steps or train.step_fractions")
        steps = tuple(length - (total - s) for s in steps)
    if length is not None:
        total = length
    if list(steps) != sorted(steps) or any(s <= 0 or s >= total for s in steps):
        src = (f" (train.step_fractions={cfg.step_fractions} of {total} iterations)"
               if cfg.steps is None and cfg.step_fractions is not None else "")
        raise ConfigError(f"train.steps {list(steps)}{src} must be increasing and inside (0, {total})")
    if cfg.warmup_iters >= (steps[0] if steps else total):
        what = given or f"schedule {cfg.schedule}"
        raise ConfigError(f"train.warmup_iters={cfg.warmup_iters} is not shorter than the first LR drop at "
                          f"{steps[0] if steps else total} ({what}, {total} iterations on "
                          f"{dataset_size} images at batch {cfg.batch_size}): lower train.warmup_iters")
    label = (f"{cfg.epochs:g} epochs" if key == "train.epochs" else
             f"{cfg.iterations} iterations" if key == "train.iterations" else cfg.schedule)
    return Plan(label, cfg.batch_size, dataset_size, total, tuple(steps),
                cfg.base_lr * cfg.batch_size / PAPER_BATCH, cfg.decay_factor, cfg.warmup_iters, cfg.warmup_factor,
                cfg.rescale_to_dataset, key, cfg.x_iterations)


def describe(plan: Plan, mean_pixels: float | None = None, instances_per_image: float | None = None) -> str:
    """The plan as `fromscratch schedule` prints it."""
    coco = " on COCO's size" if plan.rescale_to_dataset else ""
    drops = ", ".join(f"{s:,} ({100 * s / plan.total_iters:.1f}%)" for s in plan.steps) or "none"
    lines = [f"schedule {plan.schedule} at batch {plan.batch_size} on {plan.dataset_size:,} images"
             + ("" if plan.length_from == "train.schedule" else f" (length from {plan.length_from})"),
             f"  iterations: {plan.total_iters:,} = {plan.epochs:.2f} epochs = {plan.nx:.2f}x "
             + (f"(1x = {plan.x_iterations:,} iterations: train.x_iterations)" if plan.x_iterations else
                f"(N x 90k iterations at batch {PAPER_BATCH}{coco})"),
             f"  LR: base {plan.base_lr:g} ({plan.base_lr * PAPER_BATCH / plan.batch_size:g} x "
             f"{plan.batch_size}/{PAPER_BATCH}), x{plan.decay_factor:g} at {drops}",
             f"  warm-up: {plan.warmup_iters:,} iterations from {plan.warmup_factor:g} x LR",
             f"  images to be seen: {plan.images:,}"]
    if instances_per_image is not None:
        lines.append(f"  instances to be seen: {plan.images * instances_per_image:,.0f}")
    if mean_pixels is not None:
        lines.append(f"  pixels to be seen: {plan.images * mean_pixels:.3g} (after resizing)")
    return "\n".join(lines)
