"""A study's ``augmentations:`` axis: the same arms under each data.augmentation, compared within each."""
import json

import pytest
import torch

from fromscratch.config import load_config
from fromscratch.errors import ConfigError
from fromscratch.models.build import build_model
from fromscratch.study.plan import load_study, plan_runs
from fromscratch.study.report import write_report
from fromscratch.study.runner import run_study
from fromscratch.study.verdict import scratch_arm
from tests.conftest import ROOT
from tests.study.test_study import make_study


def test_arms_are_repeated_under_each_augmentation_and_paired_within_it(tmp_path):
    study, base = load_study(make_study(tmp_path, augmentations=["standard", "lsj_copypaste"]))
    assert [a.name for a in study.arms] == ["scratch_standard", "pretrained_standard",
                                            "scratch_lsj_copypaste", "pretrained_lsj_copypaste"]
    runs, cfgs = plan_runs(study, base, tmp_path / "study", 4)
    assert cfgs["scratch_standard_2_1x_s0"].data.augmentation == "standard"
    assert cfgs["pretrained_lsj_copypaste_all_2x_s0"].data.augmentation == "lsj_copypaste"
    arms = [a.model_dump() for a in study.arms]
    assert scratch_arm(arms, arms[1]) == "scratch_standard" and scratch_arm(arms, arms[3]) == "scratch_lsj_copypaste"
    # read back (plan.json holds the expanded arms): not expanded twice
    again = type(study).model_validate(study.model_dump(mode="json"))
    assert [a.name for a in again.arms] == [a.name for a in study.arms]


def test_an_augmentation_listed_twice_or_unknown_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lists one twice"):
        load_study(make_study(tmp_path, augmentations=["lsj", "lsj"]))
    with pytest.raises(ConfigError, match="augmentations"):
        load_study(make_study(tmp_path, augmentations=["mosaic"]))


@pytest.mark.slow
def test_a_study_with_two_augmentations_reports_them_side_by_side(tmp_path):
    cfg = load_config(ROOT / "configs/models/cpu.yaml", ["model.meta_arch=faster_rcnn"])
    trunk = {k[len("backbone.body."):]: v for k, v in build_model(cfg, 3).state_dict().items()
             if k.startswith("backbone.body.")}
    torch.save(trunk, tmp_path / "trunk.pth")
    path = make_study(tmp_path, arms=["scratch", {"name": "pre", "weights": str(tmp_path / "trunk.pth")}],
                      schedules=["1x"], data_sizes=["all"], augmentations=["standard", "lsj_copypaste"])
    over = {"data.lsj_size": 64, "data.copy_paste_prob": 1.0}
    lines = "".join(f"  {k}: {v}\n" for k, v in over.items())
    path.write_text(path.read_text().replace("overrides:\n", "overrides:\n" + lines, 1))
    sd = run_study(path)
    lsj_cfg = (sd / "runs" / "pre_lsj_copypaste_all_1x_s0" / "config.yaml").read_text()
    assert "augmentation: lsj_copypaste" in lsj_cfg and "lsj_size: 64" in lsj_cfg
    report = write_report(sd)[0].read_text()
    assert "## Augmentation strength" in report
    assert "| all | standard | pre_standard − scratch_standard |" in report
    assert "| all | lsj_copypaste | pre_lsj_copypaste − scratch_lsj_copypaste |" in report
    verdicts = json.loads((sd / "verdict.json").read_text())
    assert sorted(v["augmentation"] for v in verdicts) == ["lsj_copypaste", "standard"]


def test_an_ssl_arm_has_one_stage_under_every_strength(tmp_path):
    from fromscratch.study.plan import stage_dir

    arms = ["scratch", {"name": "ssl", "weights": "ssl"}]
    study, _ = load_study(make_study(tmp_path, arms=arms, augmentations=["standard", "lsj"]))
    dirs = {stage_dir(a, tmp_path) for a in study.arms if a.weights}
    assert dirs == {tmp_path / "pretrain_ssl"}
