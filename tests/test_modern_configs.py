"""Every config in configs/modern/ (detectron2's and torchvision's LSJ scratch recipes) builds its model and
trains 2 iterations on CPU at tiny scale, as tests/test_paper_configs.py does for configs/paper/; its
recipe resolves to the published one (batch 64, LR 0.1, drops at 8/9 and 26/27 of the run); and
`fromscratch configs` / `fromscratch schedule` show it."""
import shutil

import pytest

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine.schedule import make_plan
from fromscratch.engine.trainer import train
from tests.conftest import ROOT, make_coco, one_per_model, what_trains

MODERN = sorted((ROOT / "configs" / "modern").glob("*.yaml"))
# the 100/200/400-epoch variants of a recipe differ in their schedule only: one of each model trains
TRAINED = one_per_model(MODERN)
# tests/test_paper_configs.py's tiny-scale overrides and a 64 px LSJ canvas; the length and drops set here replace
# the config's train.epochs and train.step_fractions (two of a kind are refused); fp32 (fp16 needs CUDA, and bf16
# autocast on a CPU without bf16 instructions is slow: tests/engine/test_distributed.py covers it)
TINY = ["data.val=null", "data.image_root=null", "data.subset=null", "data.train_scales=[64]", "data.lsj_size=64",
        "data.scale_sampling=choice", "data.test_scale=64", "data.max_size=96", "data.num_workers=0",
        "train.batch_size=2", "train.epochs=null", "train.iterations=2", "train.step_fractions=null",
        "train.steps=[1]", "train.warmup_iters=0", "train.threads=2", "train.amp=none",
        "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=50", "model.roi.batch_size_per_image=32"]


def test_modern_configs_exist():
    names = {p.stem for p in MODERN}
    assert {f"mask_rcnn_{a}_FPN_{e}ep_LSJ" for a in ("R50", "R101") for e in (100, 200, 400)} <= names
    assert "maskrcnn_resnet50_fpn_v2_400ep_LSJ" in names


def test_schedule_variants_share_their_model():
    # R50 (detectron2's and torchvision's recipes: the same model, v2's fp32 aside) and R101
    assert [p.stem for p in TRAINED] == ["mask_rcnn_R101_FPN_100ep_LSJ", "mask_rcnn_R50_FPN_100ep_LSJ",
                                         "maskrcnn_resnet50_fpn_v2_400ep_LSJ"]
    assert {what_trains(p) for p in MODERN} == {what_trains(p) for p in TRAINED}


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAINED, ids=[p.stem for p in TRAINED])
def test_modern_config_trains_two_iterations(tmp_path, path):
    ann = make_coco(tmp_path / "data", num_images=2)
    cfg = load_config(path, TINY + [f"data.train={ann}", f"output_dir={tmp_path / 'run'}"])
    assert cfg.model.backbone.norm == cfg.model.fpn.norm == cfg.model.roi.norm == "SyncBN"
    assert cfg.data.augmentation == "lsj" and cfg.data.lsj_scale == [0.1, 2.0]
    try:
        result = train(cfg)
        assert result["iterations"] == 2 and (tmp_path / "run" / "model_0000002.pth").exists()
    finally:
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


@pytest.mark.parametrize("path", MODERN, ids=[p.stem for p in MODERN])
def test_modern_recipe_resolves_to_the_published_one(path):
    cfg = load_config(path)
    t, m = cfg.train, cfg.model
    assert m.backbone.weights is None and m.backbone.freeze_at == 0 and m.roi.box_head == "4conv1fc"
    assert m.rpn.convs == 2 and t.weight_decay == 4e-5 and t.batch_size == 64
    epochs = int(path.stem.split("_")[-2].removesuffix("ep"))
    plan = make_plan(t, 118_000)  # detectron2's epoch: 118,000 images
    assert plan.base_lr == pytest.approx(0.1) and plan.epochs == pytest.approx(epochs, abs=1e-3)
    if path.stem.startswith("mask_rcnn_"):  # detectron2: 184,375 iterations per 100 epochs, its milestones x k
        k = epochs // 100
        assert plan.total_iters == 184_375 * k
        assert all(abs(s - d * k) <= 1 for s, d in zip(plan.steps, (163_889, 177_546), strict=True))
        assert (plan.warmup_iters, plan.warmup_factor, t.amp, t.weight_decay_norm) == (500, 0.067, "fp16", 0.0)
    else:  # torchvision: --lr-steps 352 384 of 400 epochs, all parameters decayed
        assert [round(s / plan.total_iters * 400) for s in plan.steps] == [352, 384]
        assert t.weight_decay_norm == 4e-5 and t.amp == "none"


def test_configs_lists_modern_numbers(capsys):
    assert main(["configs", "--dir", "configs/modern"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(MODERN) and not any("(no published number)" in ln for ln in out)
    assert any("mask_rcnn_R50_FPN_100ep_LSJ.yaml" in ln and "box/mask AP 44.6/40.3" in ln for ln in out)
    assert any("maskrcnn_resnet50_fpn_v2_400ep_LSJ.yaml" in ln and "box/mask AP 47.4/41.8" in ln for ln in out)
    assert main(["configs", "--all"]) == 0
    out = capsys.readouterr().out
    assert "configs/paper/" in out and "configs/modern/" in out and "table1_R50_scratch_6x.yaml" in out


def test_schedule_prints_epochs_and_nx(capsys):
    assert main(["schedule", str(ROOT / "configs/modern/mask_rcnn_R50_FPN_100ep_LSJ.yaml"),
                 "--dataset-size", "118287"]) == 0
    out = capsys.readouterr().out
    assert "184,824 = 100.00 epochs = 8.21x" in out and "x0.1 at 164,288 (88.9%), 177,979 (96.3%)" in out
    assert "LR: base 0.1 (0.025 x 64/16)" in out
    assert main(["schedule", str(ROOT / "configs/paper/table1_R50_scratch_2x.yaml"), "--dataset-size", "118287"]) == 0
    assert "180,000 = 24.35 epochs = 2.00x" in capsys.readouterr().out
