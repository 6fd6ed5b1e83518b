import math

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine.optim import param_groups
from fromscratch.errors import ConfigError, FromScratchError
from fromscratch.models.build import build_model
from fromscratch.models.norm import is_norm
from fromscratch.models.summary import norm_table

SMALL = ["data.test_scale=96", "data.max_size=128", "model.rpn.post_nms_top_n_test=50"]


def _targets(size=96, k=17):
    boxes = torch.tensor([[10.0, 12, 50, 60], [30, 20, 80, 90]])
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 12:60, 10:50] = 1
    masks[1, 20:90, 30:80] = 1
    kps = torch.zeros(2, k, 3)
    kps[:, :, 0], kps[:, :, 1], kps[:, :, 2] = 30, 40, 2
    return {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks, "keypoints": kps}


@pytest.fixture(scope="module")
def r50():
    return build_model(load_config("configs/models/mask_rcnn_R50_FPN_GN_scratch.yaml", SMALL), 80)


def test_scratch_r50_is_gn_everywhere(r50):
    table = norm_table(r50)
    for part in ("trunk", "fpn", "roi heads"):
        assert set(table[part]) == {"GN"}, table
    assert table["trunk"]["GN"] == 53  # stem + 3 per bottleneck (16) + 4 shortcuts
    assert table["roi heads"]["GN"] == 8  # 4 in the box head, 4 in the mask head
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in r50.modules())
    assert all(p.requires_grad for p in r50.parameters())
    for n, m in r50.backbone.named_modules():
        if is_norm(m):
            assert (m.weight == 1).all() and (m.bias == 0).all(), n  # no zero-init of the last norm


def test_scratch_conv_std_is_msra(r50):
    checked = 0
    for name, m in list(r50.backbone.named_modules()) + list(r50.roi_heads.box_head.named_modules()):
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 16384:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups * m.groups
            expected = math.sqrt(2.0 / fan_out)
            assert abs(m.weight.std().item() / expected - 1) < 0.10, name
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn", "keypoint_rcnn"])
def test_meta_archs_train_and_eval(arch):
    cfg = load_config("configs/models/cpu.yaml", SMALL + [f"model.meta_arch={arch}"])
    model = build_model(cfg, 3)
    model.train()
    losses = model([torch.rand(3, 96, 96)], [_targets()])
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    expected |= {"mask_rcnn": {"loss_mask"}, "keypoint_rcnn": {"loss_keypoint"}}.get(arch, set())
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])[0]
    assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["labels"])
    if arch == "mask_rcnn":
        assert out["masks"].shape[-2:] == (70, 90)  # mapped back to the original size
    if arch == "keypoint_rcnn":
        assert out["keypoints"].shape[1:] == (17, 3)


def test_scratch_refuses_frozen_settings():
    with pytest.raises(ConfigError, match="FrozenBN with no pre-trained weights"):
        build_model(load_config("configs/models/cpu.yaml", ["model.backbone.norm=FrozenBN"]), 2)
    with pytest.raises(ConfigError, match="freeze_at=2 with no pre-trained weights"):
        build_model(load_config("configs/models/cpu.yaml", ["model.backbone.freeze_at=2"]), 2)
    m = build_model(load_config("configs/models/cpu.yaml", ["model.backbone.norm=FrozenBN",
                                                            "model.backbone.force=true"]), 2)
    assert norm_table(m)["trunk"]["FrozenBN"] > 0


def test_pretrained_load_report(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    sd["fc.extra"] = torch.zeros(1)  # unexpected
    del sd["layer4.1.bn2.running_var"]  # missing
    sd["layer4.1.conv2.weight"] = torch.zeros(3, 3, 3, 3)  # shape mismatch
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = build_model(load_config("configs/models/cpu.yaml", [f"model.backbone.weights={path}",
                                                                "model.backbone.norm=BN",
                                                                "model.backbone.freeze_at=2"]), 2)
    rep = model.load_report
    assert rep.missing == ["layer4.1.bn2.running_var"]
    assert rep.shape_mismatch == ["layer4.1.conv2.weight (3, 3, 3, 3) vs (512, 512, 3, 3)"]
    assert "fc.extra" in rep.unexpected and "fc.weight" in rep.unexpected
    assert len(rep.matched) == 100 - 2
    torch.testing.assert_close(model.backbone.body.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    frozen = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"} and model.init_kind == "pretrained"
    # the line a run logs at its start: the file, its hash, what matched
    import hashlib

    from fromscratch.engine.trainer import init_line

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert init_line(model) == (f"init: pre-trained trunk from {path} (sha256 {digest}): 98 tensors matched, "
                                f"1 missing, {len(rep.unexpected)} unexpected, 1 shape mismatches")


def test_pretrained_too_few_keys_and_not_a_state_dict(tmp_path):
    import torchvision

    sd = {k: v for i, (k, v) in enumerate(torchvision.models.resnet18().state_dict().items()) if i < 50}
    torch.save(sd, tmp_path / "half.pth")
    with pytest.raises(FromScratchError, match="need 90%"):
        build_model(load_config("configs/models/cpu.yaml", [f"model.backbone.weights={tmp_path / 'half.pth'}"]), 2)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(FromScratchError, match="not a state dict"):
        build_model(load_config("configs/models/cpu.yaml", [f"model.backbone.weights={tmp_path / 'list.pth'}"]), 2)


def test_no_weight_decay_on_norms():
    model = build_model(load_config("configs/models/cpu.yaml"), 2)
    default, norm = param_groups(model, 1e-4, 0.0)
    norm_ids = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    assert norm["weight_decay"] == 0 and {id(p) for p in norm["params"]} == norm_ids
    assert default["weight_decay"] == 1e-4 and not norm_ids & {id(p) for p in default["params"]}
    assert len(default["params"]) + len(norm["params"]) == len(list(model.parameters()))


def test_model_show_cli(capsys):
    assert main(["model", "show", "configs/models/cpu.yaml", "--size", "128"]) == 0
    out = capsys.readouterr().out
    assert "frozen parameters: 0" in out and "trunk: GN x" in out and "FLOPs" in out


def test_timm_backbone_with_gn():
    """Any timm features_only trunk under the FPN, its BatchNorms swapped for the chosen norm."""
    cfg = load_config("configs/models/cpu.yaml", SMALL + ["model.backbone.name=timm:resnet18",
                                                          "model.meta_arch=faster_rcnn"])
    model = build_model(cfg, 3)
    assert set(norm_table(model)["trunk"]) == {"GN"}
    model.train()
    losses = model([torch.rand(3, 96, 96)], [_targets()])
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ConfigError, match="timm has no features_only model"):
        build_model(load_config("configs/models/cpu.yaml", ["model.backbone.name=timm:not_a_model"]), 3)
