"""The schedule rule against docs/paper.md's table and detectron2's rescaled 9x."""
import pytest

from fromscratch.config import TrainConfig
from fromscratch.engine.schedule import COCO_TRAIN_IMAGES, make_plan
from fromscratch.errors import ConfigError

PAPER = {"2x": (180_000, 120_000, 160_000, 24.3), "3x": (270_000, 210_000, 250_000, 36.5),
         "6x": (540_000, 480_000, 520_000, 73.0), "9x": (810_000, 750_000, 790_000, 109.6),
         "11x": (990_000, 930_000, 970_000, 133.9)}


@pytest.mark.parametrize("sched", sorted(PAPER))
def test_paper_table(sched):
    total, s1, s2, epochs = PAPER[sched]
    plan = make_plan(TrainConfig(schedule=sched), COCO_TRAIN_IMAGES)
    assert (plan.total_iters, plan.steps) == (total, (s1, s2))
    assert round(plan.epochs, 1) == epochs
    assert plan.base_lr == 0.02


def test_detectron2_9x_at_batch_64():
    plan = make_plan(TrainConfig(schedule="9x", batch_size=64), COCO_TRAIN_IMAGES)
    assert plan.total_iters == 202_500 and plan.steps == (187_500, 197_500) and plan.base_lr == 0.08


def test_rescaled_to_dataset_keeps_epochs():
    coco = make_plan(TrainConfig(schedule="3x"), COCO_TRAIN_IMAGES)
    small = make_plan(TrainConfig(schedule="3x", batch_size=2, warmup_iters=10), 1000)
    assert abs(small.epochs - coco.epochs) < 0.01
    last60 = (small.total_iters - small.steps[0]) * 2 / 1000
    last20 = (small.total_iters - small.steps[1]) * 2 / 1000
    assert round(last60, 1) == 8.1 and round(last20, 1) == 2.7  # the last 8.1 / 2.7 epochs


def test_lr_warmup_and_drops():
    plan = make_plan(TrainConfig(schedule="2x", warmup_iters=1000, warmup_factor=0.001), COCO_TRAIN_IMAGES)
    assert plan.lr_at(0) == pytest.approx(0.02 * 0.001)
    assert plan.lr_at(500) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert plan.lr_at(1000) == pytest.approx(0.02)
    assert plan.lr_at(119_999) == pytest.approx(0.02)
    assert plan.lr_at(120_000) == pytest.approx(0.002)
    assert plan.lr_at(160_000) == pytest.approx(0.0002)


def test_explicit_iterations_and_steps():
    # explicit length keeps the rule: drops in the last 60k/20k paper iterations, rescaled (8.1/2.7 epochs)
    plan = make_plan(TrainConfig(schedule="2x", batch_size=2, iterations=6000, warmup_iters=10), 1000)
    assert plan.total_iters == 6000 and plan.steps == (6000 - 4058, 6000 - 1353)
    with pytest.raises(ConfigError, match="give train.steps"):  # too short for the rule: say so
        make_plan(TrainConfig(schedule="2x", iterations=1000, warmup_iters=10), COCO_TRAIN_IMAGES)
    plan = make_plan(TrainConfig(iterations=1000, steps=[700, 900], warmup_iters=10), 50)
    assert plan.steps == (700, 900)


def test_bad_schedules():
    with pytest.raises(ConfigError, match="expected 'Nx'"):
        make_plan(TrainConfig(schedule="fast"), 100)
    with pytest.raises(ConfigError, match="warmup_iters=1000 is not shorter"):
        make_plan(TrainConfig(schedule="1x", batch_size=2), 100)
    with pytest.raises(ConfigError, match="train.steps"):
        make_plan(TrainConfig(iterations=100, steps=[90, 50], warmup_iters=1), 100)
