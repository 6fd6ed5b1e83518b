"""Every config in configs/paper/ builds its model and trains 2 iterations on CPU (tiny images, a
COCO-format fixture), so none of them rots; and `fromscratch configs` lists each with its paper number."""
import shutil
from pathlib import Path

import pytest
import torch

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine.trainer import train
from tests.conftest import ROOT, make_coco, one_per_model, what_trains

PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
# a table's 1x ... 6x rows differ in their schedule only: each distinct model, augmentation and AMP mode trains
TRAINED = one_per_model(PAPER)


def _weights_for(cfg, tmp: Path) -> str:
    """A state dict of the config's trunk, standing in for the ImageNet file the config names."""
    import torchvision

    from fromscratch.models.backbones import resnet_trunk

    name, norm = cfg.model.backbone.name, cfg.model.backbone.norm
    sd = torchvision.models.vgg16().state_dict() if name == "vgg16" else \
        resnet_trunk(name, "BN" if norm in ("SyncBN", "FrozenBN") else norm).state_dict()
    path = tmp / f"{name}_{norm}.pth"
    torch.save(sd, path)
    return str(path)


def test_every_paper_config_shares_a_trained_model():
    assert 10 <= len(TRAINED) < len(PAPER)
    assert {what_trains(p) for p in PAPER} == {what_trains(p) for p in TRAINED}
    stems = {p.stem for p in TRAINED}  # scratch and pre-trained, GN and SyncBN, box, mask, keypoint, cascade, VGG
    assert {"fig4_R50_SyncBN_scratch", "fig6_keypoint_R50_GN_scratch_2x", "table3_X152_scratch_trainaug_cascade",
            "vgg16_faster_rcnn_pretrained_9x"} <= stems


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAINED, ids=[p.stem for p in TRAINED])
def test_paper_config_trains_two_iterations(tmp_path, path):
    ann = make_coco(tmp_path / "data", num_images=2)
    over = [f"data.train={ann}", "data.val=null", "data.image_root=null", "data.subset=null",
            "data.train_scales=[64]", "data.scale_sampling=choice", "data.test_scale=64", "data.max_size=96",
            "data.num_workers=0", "train.batch_size=2", "train.iterations=2", "train.steps=[1]",
            "train.warmup_iters=0", "train.threads=2", "model.num_keypoints=3", f"output_dir={tmp_path / 'run'}",
            # the same architecture with fewer proposals and sampled RoIs: this checks that it builds and trains
            "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=50",
            "model.roi.batch_size_per_image=32"]
    cfg = load_config(path, over)
    if cfg.model.backbone.weights:
        cfg = load_config(path, over + [f"model.backbone.weights={_weights_for(cfg, tmp_path)}"])
    try:
        result = train(cfg)
        assert result["iterations"] == 2 and (tmp_path / "run" / "model_0000002.pth").exists()
    finally:  # checkpoints of the paper's models are up to 1 GB each: do not keep 44 of them
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_configs_lists_paper_numbers(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(PAPER) and not any("(no paper number)" in ln for ln in out)
    assert any("table1_R50_scratch_6x.yaml" in ln and "41.3" in ln for ln in out)
