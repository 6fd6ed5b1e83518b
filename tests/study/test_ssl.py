"""The self-supervised arm: lightly's SimCLR and BYOL on the detector's own trunk, from unlabeled images."""
import json
import shutil

import pytest

from fromscratch.config import load_config
from fromscratch.models.build import build_model
from fromscratch.study.plan import load_study
from fromscratch.study.pretrain import pretrain
from fromscratch.study.report import write_report
from fromscratch.study.runner import run_study
from tests.conftest import ROOT, prepared
from tests.study.test_study import make_study

pytest.importorskip("lightly", reason="the ssl extra (lightly) is not installed")


def _folder(tmp_path, n=16):
    """n unlabeled fashion-scenes images in a folder tree (any size, any count)."""
    train = prepared("fashion-scenes")
    images = sorted((train.parent / "images").rglob("*.png"))[:n]
    for i, src in enumerate(images):
        dst = tmp_path / "unlabeled" / f"part{i % 2}" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return tmp_path / "unlabeled"


def _cfg(tmp_path, method, source, *extra):
    return load_config(ROOT / "configs/models/cpu.yaml", [
        f"pretrain.method={method}", f"pretrain.source={source}", "pretrain.image_size=32", "pretrain.batch_size=8",
        "pretrain.epochs=30", "pretrain.warmup_iters=2", "pretrain.lr=0.1", "pretrain.min_scale=0.5",
        f"pretrain.output={tmp_path / method}", "train.threads=2", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_each_method_learns_on_an_unlabeled_folder_and_its_trunk_loads_fully(tmp_path, method):
    cfg = _cfg(tmp_path, method, _folder(tmp_path))
    r = pretrain(cfg)
    assert r["loss_last"] < r["loss_first"], r  # the loss decreases
    # accounting of a known run: 16 images, batch 8 -> 2 iterations an epoch, 30 epochs
    assert (r["unlabeled_images"], r["iterations"], r["images"], r["views"]) == (16, 60, 480, 960)
    assert r["pixels"] == 960 * 32 * 32 and r["epochs"] == 30 and r["knn_top1"] is None  # no labels to probe
    acct = json.loads((tmp_path / method / "accounting.json").read_text())
    assert acct["method"] == method and acct["images"] == 480
    model = build_model(load_config(ROOT / "configs/models/cpu.yaml",
                                    [f"model.backbone.weights={tmp_path / method / 'backbone.pth'}"]), 10)
    rep = model.load_report
    assert rep.matched and not rep.missing and not rep.unexpected and not rep.shape_mismatch


def test_ssl_arm_validation(tmp_path):
    path = make_study(tmp_path, arms=["scratch", {"name": "ssl", "weights": "ssl"}])
    study, _ = load_study(path)
    assert study.arms[1].pretrain.method == "simclr" and study.arms[1].pretrain.source == "data.train"
    bad = make_study(tmp_path / "b", arms=["scratch", {"name": "x", "weights": "ssl",
                                                       "pretrain": {"method": "supervised"}}])
    with pytest.raises(Exception, match="weights ssl needs pretrain.method simclr or byol"):
        load_study(bad)


@pytest.mark.slow
def test_a_study_with_scratch_supervised_and_ssl_arms_plans_runs_and_reports(tmp_path):
    ssl = {"name": "ssl", "weights": "ssl", "pretrain": {"method": "byol", "source": "data.train", "image_size": 32,
                                                        "batch_size": 4, "epochs": 2, "warmup_iters": 1}}
    path = make_study(tmp_path, arms=["scratch", "pretrained", ssl], schedules=["1x"], data_sizes=["all"])
    sd = run_study(path)
    acct = json.loads((sd / "pretrain_ssl" / "accounting.json").read_text())
    assert acct["method"] == "byol" and acct["unlabeled_images"] == 4 and acct["knn_top1"] is not None
    cfg = (sd / "runs" / "ssl_all_1x_s0" / "config.yaml").read_text()
    assert str(sd / "pretrain_ssl" / "backbone.pth") in cfg
    report, verdicts = write_report(sd)
    text = report.read_text()
    assert "ssl" in text and any("ssl" in v for v in verdicts) and any("pretrained" in v for v in verdicts)
    assert "- `pretrain_ssl`: byol on data.train, 4 unlabeled images" in text and "k-NN top-1" in text
