"""The loop: it learns, logs, evaluates, checkpoints, and resumes where it stopped."""
import json

import numpy as np
import pytest
import torch

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine.checkpoint import list_checkpoints, load_checkpoint
from fromscratch.engine.trainer import train
from fromscratch.errors import ConfigError
from tests.conftest import make_coco

TINY = ["model.backbone.name=resnet18", "data.train_scales=[64]", "data.test_scale=64", "data.max_size=96",
        "data.num_workers=0", "train.threads=2", "train.log_period=1"]


def _cfg(tmp_path, *extra):
    ann = make_coco(tmp_path / "data", num_images=4)
    return load_config("configs/models/cpu.yaml", TINY + [f"data.train={ann}", f"data.val={ann}",
                                                          f"output_dir={tmp_path / 'run'}", *extra])


def _lines(run, kind):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in ln]


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(tmp_path):
    cfg = _cfg(tmp_path, "train.iterations=40", "train.steps=[39]", "train.warmup_iters=5", "train.base_lr=0.08",
               "data.flip_prob=0", "train.batch_size=1", "data.subset=" + str(tmp_path / "one.json"))
    (tmp_path / "one.json").write_text('{"image_ids": [1]}')
    train(cfg)
    losses = [ln["loss"] for ln in _lines(tmp_path / "run", "train")]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


@pytest.mark.slow
def test_run_folder_and_exact_resume(tmp_path):
    extra = ["train.iterations=6", "train.steps=[4]", "train.warmup_iters=2", "train.checkpoint_period=3",
             "train.eval_period=3"]
    full = train(_cfg(tmp_path / "a", *extra))
    run_a = tmp_path / "a" / "run"
    assert {p.name for p in run_a.iterdir()} >= {"config.yaml", "metrics.jsonl", "eval", "model_0000006.pth"}
    evals = _lines(run_a, "eval")
    assert [e["iteration"] for e in evals] == [3, 6] and "segm" in evals[-1] and "AP75" in evals[-1]["bbox"]
    assert full["samples"]["images"] == 12 and full["samples"]["instances"] == 24  # 2 non-crowd per image
    best = load_checkpoint(run_a / "model_best.pth")
    assert best["AP"] == max(e["bbox"]["AP"] for e in evals) and best["iteration"] in (3, 6)

    cfg_b = _cfg(tmp_path / "b", *extra)
    train(cfg_b)
    run_b = tmp_path / "b" / "run"
    (run_b / "model_0000006.pth").unlink()  # as if killed after the checkpoint at 3
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg_b)
    train(cfg_b, resume=True)
    iters = [ln["iteration"] for ln in _lines(run_b, "train")]
    assert iters == [1, 2, 3, 4, 5, 6]  # the lines after 3 were logged again, once
    lrs_a = [ln["lr"] for ln in _lines(run_a, "train")]
    assert [ln["lr"] for ln in _lines(run_b, "train")] == lrs_a and lrs_a[4] == pytest.approx(lrs_a[3] * 0.1)
    a, b = load_checkpoint(run_a / "model_0000006.pth"), load_checkpoint(run_b / "model_0000006.pth")
    assert b["iteration"] == 6 and b["samples"] == a["samples"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # bit-identical to the uninterrupted run
    assert [p.name for p in list_checkpoints(run_b)] == ["model_0000003.pth", "model_0000006.pth"]


@pytest.mark.slow
def test_eval_cli_on_checkpoint(tmp_path, capsys):
    cfg = _cfg(tmp_path, "train.iterations=2", "train.steps=[1]", "train.warmup_iters=0")
    train(cfg)
    assert "init: scratch (random MSRA init" in capsys.readouterr().out  # every run says what it started from
    ann = tmp_path / "data" / "ann.json"
    rc = main(["eval", "configs/models/cpu.yaml", *TINY, f"data.val={ann}", "--weights",
               str(tmp_path / "run" / "model_0000002.pth"), f"output_dir={tmp_path / 'run'}", "--out",
               str(tmp_path / "ev")])  # an override after an option is accepted
    assert rc == 0 and "bbox" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    dets = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert all(d["category_id"] in (3, 7) for d in dets)  # the file's own category ids


def test_bad_output_dir(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        train(_cfg(tmp_path, f"output_dir={tmp_path / 'file' / 'sub'}", "train.iterations=2", "train.steps=[1]",
                   "train.warmup_iters=0"))


def _voc_fixture(root):
    from PIL import Image

    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((48, 64, 3)) * 255).astype(np.uint8)).save(
            root / "JPEGImages" / f"{i:06d}.jpg")
        (root / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation><filename>{i:06d}.jpg</filename><size><width>64</width><height>48</height></size>"
            "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
            "<ymax>40</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult><bndbox><xmin>35"
            "</xmin><ymin>10</ymin><xmax>60</xmax><ymax>30</ymax></bndbox></object></annotation>")
    return root


@pytest.mark.slow
def test_voc_dataset_trains_and_reports_voc_map(tmp_path):
    voc = _voc_fixture(tmp_path / "VOC")
    cfg = load_config("configs/models/cpu.yaml", TINY + ["model.meta_arch=faster_rcnn", f"data.train={voc}",
                                                         f"data.val={voc}", f"output_dir={tmp_path / 'run'}",
                                                         "train.iterations=2", "train.steps=[1]",
                                                         "train.warmup_iters=0", "model.roi.score_thresh=0.0"])
    result = train(cfg)
    assert set(result["metrics"]) == {"voc"}
    assert {"AP50", "AP75", "AP50_11point"} <= set(result["metrics"]["voc"])


@pytest.mark.slow
@pytest.mark.parametrize("extra,types", [
    (["model.meta_arch=keypoint_rcnn", "model.num_keypoints=3", "model.roi.keypoint_head_dim=32"],
     {"bbox", "keypoints"}),
    (["model.meta_arch=faster_rcnn", "model.backbone.name=vgg16", "model.backbone.norm=none", "model.fpn.norm=none",
      "model.roi.norm=none", "model.roi.box_head=2fc"], {"bbox"})], ids=["keypoint_rcnn", "vgg16"])
def test_keypoint_and_vgg_train_and_evaluate(tmp_path, extra, types):
    cfg = _cfg(tmp_path, "train.iterations=2", "train.steps=[1]", "train.warmup_iters=0",
               "model.roi.score_thresh=0.0", *extra)
    assert set(train(cfg)["metrics"]) == types


@pytest.mark.slow
def test_early_stopping_waits_for_its_grace_period(tmp_path):
    """No learning (LR 0): AP never improves, so with patience 1 the run stops at the first evaluation
    after the grace period (half of 10 iterations), says so in metrics.jsonl, and is complete."""
    from fromscratch.study.runner import is_complete

    cfg = _cfg(tmp_path, "train.iterations=10", "train.steps=[9]", "train.warmup_iters=0", "train.base_lr=0.0",
               "train.eval_period=1", "train.early_stop_patience=1", "train.early_stop_grace=0.5")
    result = train(cfg)
    run = tmp_path / "run"
    stop = _lines(run, "early_stop")
    assert result["iterations"] == 5 and [s["iteration"] for s in stop] == [5] and stop[0]["best_iteration"] == 1
    assert (run / "model_0000005.pth").exists()
    assert json.loads((run / "early_stopped.json").read_text())["iteration"] == 5
    assert [e["iteration"] for e in _lines(run, "eval")] == [1, 2, 3, 4, 5] and is_complete(run, 10)
    with pytest.raises(ConfigError, match="train.early_stop_patience"):
        _cfg(tmp_path / "b", "train.early_stop_patience=2")  # no periodic evaluation to watch


@pytest.mark.slow
def test_early_stopping_decides_alike_after_a_resume(tmp_path):
    """Killed after the checkpoint at 2 (patience 2 already half used), the resumed run replays the
    evaluations it logged and stops at 3, as the uninterrupted run did; a run resumed after its stop
    stops again at once."""
    extra = ["train.iterations=10", "train.steps=[9]", "train.warmup_iters=0", "train.base_lr=0.0",
             "train.eval_period=1", "train.checkpoint_period=1", "train.keep_checkpoints=5",
             "train.early_stop_patience=2", "train.early_stop_grace=0"]
    cfg = _cfg(tmp_path, *extra)
    assert train(cfg)["iterations"] == 3
    run = tmp_path / "run"
    (run / "model_0000003.pth").unlink()
    (run / "early_stopped.json").unlink()
    assert train(cfg, resume=True)["iterations"] == 3  # from the checkpoint at 2
    assert [s["iteration"] for s in _lines(run, "early_stop")] == [3] and (run / "early_stopped.json").exists()
    assert [e["iteration"] for e in _lines(run, "eval")] == [1, 2, 3]
    assert train(cfg, resume=True)["iterations"] == 3 and not list(run.glob("model_000000[4-9].pth"))
