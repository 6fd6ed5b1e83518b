"""benchmarks/gpu_check.py (`make gpu-check`) without a GPU: it says what it would measure and that no CUDA
device was found, exit 0; its data preparation and, with --device cpu, its jobs run here (CI never runs the
GPU part)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, make_coco, prepared

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device visible, even on a GPU machine
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "no CUDA device found: nothing measured" in out
    for what in ("configs/models/mask_rcnn_R50_FPN_GN_scratch.yaml",
                 "configs/models/mask_rcnn_R50_FPN_SyncBN_LSJ_scratch.yaml",
                 "maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)", "AMP bf16 and fp16",
                 "default and channels_last", "peak CUDA memory"):
        assert what in out, what


def test_upscaled_scenes_keep_boxes_masks_and_keypoints(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import upscaled_scenes
    finally:
        sys.path.pop(0)
    from fromscratch.data.coco import load_coco

    src = load_coco(make_coco(tmp_path / "src", num_images=2, size=(64, 48)))
    ann = upscaled_scenes(tmp_path / "src" / "ann.json", tmp_path / "big", 192, 2)
    big = load_coco(ann)  # every check of the loader passes, images included
    assert json.loads((tmp_path / "big" / "stamp.json").read_text())["side"] == 192
    for a, b in zip(src.records, big.records, strict=True):
        assert (b.width, b.height) == (192, 192)
        scale = np.asarray([192 / a.width, 192 / a.height] * 2, dtype=np.float32)
        np.testing.assert_allclose(b.boxes, a.boxes * scale, rtol=1e-5)
        assert b.masks().shape == (a.num_instances, 192, 192)
        areas = b.masks().reshape(a.num_instances, -1).sum(1) / (scale[0] * scale[1])
        np.testing.assert_allclose(areas, a.masks().reshape(a.num_instances, -1).sum(1), rtol=0.1)
        np.testing.assert_allclose(b.keypoints[..., 2], a.keypoints[..., 2])
    mtime = ann.stat().st_mtime_ns
    assert upscaled_scenes(tmp_path / "src" / "ann.json", tmp_path / "big", 192, 2) == ann
    assert ann.stat().st_mtime_ns == mtime  # written once


@pytest.mark.slow
def test_jobs_run_on_cpu_processes(tmp_path):
    # the GPU part's plumbing (torchrun, DDP, the Trainer and torchvision's loop, channels_last re-wrap, the
    # table) on 2 CPU processes (gloo) at 96 px, the LSJ canvas included (the "input" column is measured).
    # fp32: bf16 autocast on a CPU without bf16 instructions takes minutes a step (bf16 training on CPU is tested
    # in tests/engine/test_distributed.py and tests/test_modern_configs.py); timings here mean nothing
    prepared("fashion-scenes", "train.json")
    env = {**os.environ, "FROMSCRATCH_BENCH_DIR": str(tmp_path / "bench")}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--nproc", "2", "--amp", "none", "--size", "96",
           "--side", "128", "--images", "4", "--iters", "1", "--warmup", "1", "--batch-per-gpu", "1", "--workers",
           "0", "--threads", "1", "--models", "modern", "--layouts", "channels_last", "--timeout", "400"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    logs = tmp_path / "bench" / "gpu_check" / "logs"
    assert proc.returncode == 0, proc.stdout[-3000:] + "".join(p.read_text()[-3000:] for p in logs.glob("*.log"))
    assert "| ref | maskrcnn_resnet50_fpn | none | default | 96x96 | 1 x 2 |" in proc.stdout
    assert "| ours | modern | none | channels_last | 96x96 | 1 x 2 |" in proc.stdout
    assert "x torchvision's reference loop" in proc.stdout
    assert "Grad strides do not match" not in (logs / "ours_modern_none_channels_last.log").read_text()
