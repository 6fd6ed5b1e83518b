"""`fromscratch init` (a starter study measured from the data) and `study --plan-only` (its cost)."""
import json

import pytest
import yaml

from fromscratch.cli import main
from fromscratch.errors import ConfigError
from fromscratch.study.plan import load_study
from fromscratch.study.starter import Measured, anchors, scales, size_ladder, write_starter
from tests.conftest import make_coco


def test_size_ladder_follows_the_papers_shape():
    assert size_ladder(1000) == ["all", 300, 100, 30]
    assert size_ladder(118_000) == ["all", 40_000, 10_000, 4_000]
    assert size_ladder(34) == ["all", 10]  # a small set goes down to 8 images
    assert size_ladder(20) == ["all"]


def test_scales_and_anchors_follow_the_images_and_objects():
    m = Measured(100, 10, ["a"], 3.0, 400.0, 600.0, (12.0, 40.0, 90.0), False, False)
    assert scales(m, gpu=False) == (256, 384)  # capped on a CPU, aspect kept
    assert scales(m, gpu=True) == (384, 576)  # the images' own size, a multiple of 32 (paper: 800 for larger)
    assert anchors(m, 256) == [8, 16, 32, 64, 128]  # 12 px at 400 -> 7.7 px at 256
    big = Measured(100, 10, ["a"], 3.0, 800.0, 1333.0, (40.0, 100.0, 300.0), True, False)
    assert anchors(big, 800) == [32, 64, 128, 256, 512]  # COCO-like: the paper's anchors


def test_init_writes_a_study_that_plans_with_its_cost(tmp_path, capsys):
    train = make_coco(tmp_path / "data", num_images=6, size=(64, 48))
    val = tmp_path / "data" / "val.json"
    val.write_text(train.read_text())
    out = tmp_path / "study.yaml"
    assert main(["init", str(train), "--val", str(val), "--out", str(out)]) == 0
    text = out.read_text()
    assert "6 training images, 6 validation images, 2 categories" in text and "masks: yes" in text
    study, _ = load_study(out)
    assert [a.name for a in study.arms] == ["scratch", "pretrained"] and study.adaptive
    raw = yaml.safe_load(text)
    assert raw["overrides"]["model.meta_arch"] == "mask_rcnn" and raw["overrides"]["data.train_scales"] == [64]
    assert main(["study", str(out), "--plan-only", "--no-timing"]) == 0
    printed = capsys.readouterr().out
    assert "| scratch_all_1x_s0 |" in printed and "total:" in printed and "estimated time" not in printed
    plan = json.loads((tmp_path / "study" / "plan.json").read_text())
    cost = json.loads((tmp_path / "study" / "cost.json").read_text())
    trained = {r["name"]: r["total_iters"] - r["branch_iter"] for r in plan["runs"]}
    assert {r["name"]: r["iterations"] for r in cost["runs"]} == trained
    assert cost["iterations"] == sum(trained.values()) and cost["images"] == 2 * cost["iterations"]  # batch 2


def test_stated_step_time_and_parallel_workers(tmp_path, capsys):
    train = make_coco(tmp_path / "data", num_images=6, size=(64, 48))
    out = tmp_path / "study.yaml"
    write_starter(str(train), out, val=str(train))
    raw = yaml.safe_load(out.read_text())
    raw.update(parallel=1, data_sizes=["all"], adaptive=False)
    out.write_text(yaml.safe_dump(raw))
    assert main(["study", str(out), "--plan-only", "--step-time", "2.0"]) == 0
    cost = json.loads((tmp_path / "study" / "cost.json").read_text())
    assert cost["timing"]["step_s"] == 2.0 and "stated" in cost["timing"]["source"]
    assert cost["wall_s"] == pytest.approx(cost["compute_s"])  # one worker: everything in sequence
    assert cost["compute_s"] >= 2.0 * cost["iterations"]
    assert "estimated time:" in capsys.readouterr().out


@pytest.mark.slow
def test_plan_only_times_a_few_real_steps(tmp_path, capsys):
    train = make_coco(tmp_path / "data", num_images=4, size=(64, 48))
    out = tmp_path / "study.yaml"
    write_starter(str(train), out, val=str(train))
    assert main(["study", str(out), "--plan-only"]) == 0
    t = json.loads((tmp_path / "study" / "cost.json").read_text())["timing"]
    assert t["step_s"] > 0 and t["image_s"] > 0 and t["source"].startswith("measured on this machine")
    assert not list((tmp_path / "study").glob("runs/*/model_*.pth"))  # nothing trained


def test_init_errors_name_what_is_missing(tmp_path):
    train = make_coco(tmp_path / "data", num_images=2)
    with pytest.raises(ConfigError, match="no validation set found beside it"):
        write_starter(str(train), tmp_path / "s.yaml")
    with pytest.raises(ConfigError, match="--weights nope.pth: file not found"):
        write_starter(str(train), tmp_path / "s.yaml", val=str(train), weights="nope.pth")
    assert main(["init", str(tmp_path / "missing.json"), "--val", str(train), "--out", str(tmp_path / "s.yaml")]) == 2


def test_a_study_refuses_a_detector_whose_length_is_fixed(tmp_path):
    from fromscratch.study.plan import plan_runs
    from tests.study.test_study import make_study

    study, base = load_study(make_study(tmp_path, overrides={"data.train": "x.json", "train.iterations": 50}))
    with pytest.raises(ConfigError, match="train.iterations is set, so every schedule"):
        plan_runs(study, base, tmp_path / "study", train_size=4)
