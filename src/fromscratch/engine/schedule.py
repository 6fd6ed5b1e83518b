"""The paper's schedule rule, rescaled to any batch size and dataset size; linear warm-up.

``Nx`` = N x 90k iterations at 16 images a batch; the LR drops by ``decay_factor`` in the last 60k
and again in the last 20k iterations, whatever N (docs/paper.md, Schedules; note Detectron's own
1x drops at 60k/80k instead). Rescaling keeps the amount of training per image: at batch B the
iteration counts scale by 16/B (detectron2's 9x at batch 64: 202.5k, drops 187.5k/197.5k), and on a
dataset of D images by D/118,287 (1x = 12.17 epochs of COCO train2017; the drops are the last
8.1 and 2.7 epochs), so "3x" means the same epochs on any dataset.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

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

    @property
    def epochs(self) -> float:
        return self.total_iters * self.batch_size / self.dataset_size

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
        return d


def paper_iterations(multiplier: float, batch_size: int, dataset_size: int | None) -> tuple[int, tuple[int, int]]:
    """Total iterations and the two drops of ``Nx`` at ``batch_size`` (on ``dataset_size`` images)."""
    scale = PAPER_BATCH / batch_size
    if dataset_size is not None:
        scale *= dataset_size / COCO_TRAIN_IMAGES
    total = multiplier * ITERS_PER_X
    steps = (total - LAST_DROPS[0], total - LAST_DROPS[1])
    if multiplier * ITERS_PER_X <= LAST_DROPS[0]:
        raise ConfigError(f"train.schedule={multiplier:g}x is shorter than the paper's last-60k drop window; "
                          "use >= 1x, or give train.iterations and train.steps")
    return max(1, round(total * scale)), tuple(round(s * scale) for s in steps)  # type: ignore[return-value]


def make_plan(cfg: TrainConfig, dataset_size: int) -> Plan:
    """The schedule of ``cfg`` for ``dataset_size`` training images; explicit iterations/steps win."""
    if dataset_size <= 0:
        raise ConfigError("the training set is empty")
    total, steps = paper_iterations(parse_multiplier(cfg.schedule), cfg.batch_size,
                                    dataset_size if cfg.rescale_to_dataset else None)
    if cfg.steps is not None:
        steps = tuple(cfg.steps)
    elif cfg.iterations is not None:  # same rule: drops in the (rescaled) last 60k and 20k iterations
        window = total - steps[0]
        if cfg.iterations <= window:
            raise ConfigError(f"train.iterations={cfg.iterations} is not longer than the paper's last-60k drop "
                              f"window ({window} iterations at this batch and dataset size): give train.steps")
        steps = tuple(cfg.iterations - (total - s) for s in steps)
    if cfg.iterations is not None:
        total = cfg.iterations
    if list(steps) != sorted(steps) or any(s <= 0 or s >= total for s in steps):
        raise ConfigError(f"train.steps {list(steps)} must be increasing and inside (0, {total})")
    if cfg.warmup_iters >= (steps[0] if steps else total):
        raise ConfigError(f"train.warmup_iters={cfg.warmup_iters} is not shorter than the first LR drop at "
                          f"{steps[0] if steps else total} (schedule {cfg.schedule}, {total} iterations on "
                          f"{dataset_size} images at batch {cfg.batch_size}): lower train.warmup_iters")
    return Plan(cfg.schedule, cfg.batch_size, dataset_size, total, tuple(steps),
                cfg.base_lr * cfg.batch_size / PAPER_BATCH, cfg.decay_factor, cfg.warmup_iters, cfg.warmup_factor)


def describe(plan: Plan, mean_pixels: float | None = None, instances_per_image: float | None = None) -> str:
    """The plan as `fromscratch schedule` prints it."""
    lines = [f"schedule {plan.schedule} at batch {plan.batch_size} on {plan.dataset_size:,} images",
             f"  iterations: {plan.total_iters:,} ({plan.epochs:.2f} epochs)",
             f"  LR: base {plan.base_lr:g} ({plan.base_lr * PAPER_BATCH / plan.batch_size:g} x "
             f"{plan.batch_size}/{PAPER_BATCH}), x{plan.decay_factor:g} at "
             + ", ".join(f"{s:,}" for s in plan.steps),
             f"  warm-up: {plan.warmup_iters:,} iterations from {plan.warmup_factor:g} x LR",
             f"  images to be seen: {plan.images:,}"]
    if instances_per_image is not None:
        lines.append(f"  instances to be seen: {plan.images * instances_per_image:,.0f}")
    if mean_pixels is not None:
        lines.append(f"  pixels to be seen: {plan.images * mean_pixels:.3g} (after resizing)")
    return "\n".join(lines)
