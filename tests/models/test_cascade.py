"""Cascade R-CNN: 3 stages train and infer, masks on the last stage, and the switch from one stage."""
import pytest
import torch

from fromscratch.config import load_config
from fromscratch.models.build import build_model
from fromscratch.models.cascade import REG_WEIGHTS, CascadeRoIHeads
from tests.models.test_build import SMALL, _targets


@pytest.mark.parametrize("arch", ["cascade_rcnn", "cascade_mask_rcnn"])
def test_cascade_trains_and_infers(arch):
    model = build_model(load_config("configs/models/cpu.yaml", SMALL + [f"model.meta_arch={arch}"]), 3)
    rh = model.roi_heads
    assert isinstance(rh, CascadeRoIHeads) and rh.active_stages == 3
    assert [c.weights for c in rh.coders] == list(REG_WEIGHTS)
    assert [m.high_threshold for m in rh.matchers] == [0.5, 0.6, 0.7]
    model.train()
    losses = model([torch.rand(3, 96, 96)], [_targets()])
    for s in (1, 2, 3):
        assert f"loss_classifier_s{s}" in losses and f"loss_box_reg_s{s}" in losses
    assert ("loss_mask" in losses) == (arch == "cascade_mask_rcnn")
    sum(losses.values()).backward()
    for s in range(2):  # every stage gets gradients
        assert rh.extra_predictors[s].cls_score.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])[0]
    assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["labels"])
    if arch == "cascade_mask_rcnn":
        assert out["masks"].shape[-2:] == (70, 90)


def test_one_stage_until_switch():
    model = build_model(load_config("configs/models/cpu.yaml", SMALL + ["model.meta_arch=cascade_mask_rcnn"]), 3)
    model.roi_heads.active_stages = 1  # as before model.cascade_from_iter
    model.train()
    losses = model([torch.rand(3, 96, 96)], [_targets()])
    assert "loss_classifier_s1" in losses and "loss_classifier_s2" not in losses and "loss_mask" in losses
    sum(losses.values()).backward()
    assert model.roi_heads.extra_predictors[0].cls_score.weight.grad is None


@pytest.mark.slow
def test_cascade_from_iter_in_training(tmp_path):
    from fromscratch.engine.trainer import train
    from tests.conftest import make_coco

    ann = make_coco(tmp_path / "data", num_images=2)
    cfg = load_config("configs/models/cpu.yaml", [
        "model.meta_arch=cascade_mask_rcnn", "model.cascade_from_iter=2", f"data.train={ann}", f"data.val={ann}",
        "data.train_scales=[64]", "data.test_scale=64", "data.max_size=96", "data.num_workers=0",
        "train.iterations=4", "train.steps=[3]", "train.warmup_iters=0", "train.log_period=1",
        f"output_dir={tmp_path / 'run'}"])
    result = train(cfg)
    import json

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"train"' in x]
    assert "loss_classifier_s2" not in lines[1] and "loss_classifier_s2" in lines[2]  # switched at iteration 2
    assert set(result["metrics"]) == {"bbox", "segm"}
