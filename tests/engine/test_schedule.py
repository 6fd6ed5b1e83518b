"""The schedule rule against docs/paper.md's table and detectron2's rescaled 9x; lengths in epochs and LR drops
as fractions (detectron2's LSJ configs), and their precedence."""
import pytest

from fromscratch.config import TrainConfig, load_config
from fromscratch.engine.schedule import COCO_TRAIN_IMAGES, describe, epoch_iterations, make_plan
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


def test_x_iterations_fix_1x_in_iterations_at_any_data_size():
    """The paper's small-data runs kept iteration counts: 1x = train.x_iterations on 30 or 1,000 images,
    the drops in the last 2/3 and 2/9 of 1x (60k and 20k of 90k) whatever N."""
    for size in (30, 1000):
        one = make_plan(TrainConfig(schedule="1x", batch_size=2, warmup_iters=10, x_iterations=900), size)
        four = make_plan(TrainConfig(schedule="4x", batch_size=2, warmup_iters=10, x_iterations=900), size)
        assert (one.total_iters, one.steps) == (900, (300, 700))
        assert (four.total_iters, four.steps) == (3600, (3000, 3400)) and four.nx == 4.0
        assert round(four.epochs, 1) == round(3600 * 2 / size, 1)
    text = describe(four)
    assert "= 4.00x (1x = 900 iterations: train.x_iterations)" in text
    with pytest.raises(ConfigError, match="shorter than the paper's last-60k drop window"):
        make_plan(TrainConfig(schedule="0.5x", x_iterations=900), 1000)


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


# ------------------------------------------------------------------ train.epochs and train.step_fractions


def test_epochs_define_the_length_detectron2_lsj():
    # detectron2's mask_rcnn_R_50_FPN_100ep_LSJ: 100 epochs of 118,000 images at batch 64 = 184,375 iterations,
    # milestones 163,889 and 177,546 (8/9 and 26/27 of the run)
    t = TrainConfig(batch_size=64, base_lr=0.025, epochs=100, step_fractions=[0.888889, 0.962963], warmup_iters=500)
    plan = make_plan(t, 118_000)
    assert (plan.total_iters, plan.steps, plan.base_lr) == (184_375, (163_889, 177_546), 0.1)
    assert plan.schedule == "100 epochs" and plan.length_from == "train.epochs" and plan.epochs == 100
    coco = make_plan(t, COCO_TRAIN_IMAGES)  # ceil(100 x 118,287 / 64)
    assert coco.total_iters == 184_824 and round(coco.nx, 2) == 8.21


@pytest.mark.parametrize("epochs, size, batch, iters", [(0.1, 1000, 2, 50), (1.5, 7, 2, 6), (3, 10, 4, 8),
                                                        (12.17, 118_287, 16, 89_973), (1e-9, 10, 2, 1)])
def test_epoch_iterations_round_up_exactly(epochs, size, batch, iters):
    # ceil, exact for decimal epochs: 0.1 x 1000 / 2 is 50 (floating point: 50.000000000000004 -> 51)
    assert epoch_iterations(epochs, size, batch) == iters


def test_epochs_without_fractions_keep_the_paper_rule():
    # 36.5 epochs ~ 3x: drops in the last 60k and 20k iterations, counted back from the end
    plan = make_plan(TrainConfig(epochs=36.5), COCO_TRAIN_IMAGES)
    assert plan.total_iters == 269_843 and plan.steps == (209_843, 249_843)
    with pytest.raises(ConfigError, match=r"train.epochs=1 \(7 iterations\) is not longer .*train.step_fractions"):
        make_plan(TrainConfig(epochs=1, batch_size=2, warmup_iters=1), 13)


def test_step_fractions_with_iterations_and_schedule():
    assert make_plan(TrainConfig(iterations=1000, step_fractions=[0.5, 0.75], warmup_iters=10), 50).steps == (500, 750)
    plan = make_plan(TrainConfig(schedule="2x", step_fractions=[0.5]), COCO_TRAIN_IMAGES)
    assert (plan.total_iters, plan.steps) == (180_000, (90_000,))
    assert make_plan(TrainConfig(iterations=100, step_fractions=[], warmup_iters=10), 50).steps == ()
    with pytest.raises(ConfigError, match=r"train.step_fractions=\[0.889, 0.963\] of 2 iterations"):
        make_plan(TrainConfig(iterations=2, step_fractions=[0.889, 0.963], warmup_iters=0), 50)


def test_nx_view_of_any_plan():
    for sched in ("1x", "2x", "6x", "9x"):
        assert make_plan(TrainConfig(schedule=sched, batch_size=64), COCO_TRAIN_IMAGES).nx == pytest.approx(
            float(sched[:-1]), abs=1e-4)
    small = make_plan(TrainConfig(schedule="3x", batch_size=2, warmup_iters=10), 1000)
    assert small.nx == pytest.approx(3, abs=2e-3)  # rescaled to the dataset: the same epochs as 3x on COCO
    fixed = make_plan(TrainConfig(iterations=90_000, rescale_to_dataset=False, steps=[60_000], warmup_iters=10), 1000)
    assert fixed.nx == 1.0  # not rescaled: N x 90k iterations at batch 16, whatever the dataset
    text = describe(make_plan(TrainConfig(epochs=12, batch_size=8, warmup_iters=10), 1000))
    assert "schedule 12 epochs at batch 8 on 1,000 images (length from train.epochs)" in text
    assert "iterations: 1,500 = 12.00 epochs = 0.99x (N x 90k iterations at batch 16 on COCO's size)" in text


@pytest.mark.parametrize("over, keys", [
    (["train.epochs=100", "train.iterations=1000"], ["train.epochs=100", "train.iterations=1000"]),
    (["train.steps=[10]", "train.step_fractions=[0.5]"], ["train.steps=[10]", "train.step_fractions=[0.5]"]),
    (["train.step_fractions=[0.9, 0.5]"], ["strictly increasing"]),
    (["train.step_fractions=[0.5, 1.0]"], ["inside (0, 1)"]),
    (["train.step_fractions=[0.5, 0.5]"], ["strictly increasing"]),
    (["train.epochs=0"], ["key 'train.epochs' = 0", "must be a number > 0"]),
    (["train.epochs=.inf"], ["must be a number > 0"]),
    (["train.iterations=0"], ["key 'train.iterations' = 0", "must be > 0"]),
])
def test_precedence_conflicts_refused_at_load(over, keys):
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    assert all(k in str(e.value) for k in keys), str(e.value)
    assert "command line" in str(e.value)


def test_precedence_conflicts_refused_by_make_plan_too():
    # a TrainConfig built in code (studies copy it) skips cross_check: make_plan says it as well
    with pytest.raises(ConfigError, match="train.epochs and train.iterations are both set"):
        make_plan(TrainConfig(epochs=10, iterations=100), 1000)
    with pytest.raises(ConfigError, match="train.steps and train.step_fractions are both set"):
        make_plan(TrainConfig(iterations=100, steps=[50], step_fractions=[0.5]), 1000)


def test_config_file_sets_epochs_and_the_command_line_overrides_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 100, step_fractions: [0.889, 0.963]}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'train.epochs' = 100.0: .*train.iterations=500"):
        load_config(f, ["train.iterations=500"])
    cfg = load_config(f, ["train.iterations=500", "train.epochs=null", "train.warmup_iters=10"])
    assert make_plan(cfg.train, 1000).steps == (444, 482) and make_plan(cfg.train, 1000).total_iters == 500
