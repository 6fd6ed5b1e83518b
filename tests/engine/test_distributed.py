"""Scale-out and never losing a run, on CPU: torchrun with gloo, SyncBN across processes, bf16
autocast, SIGKILL anywhere then --resume (bit-identical), SIGTERM writes a checkpoint."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fromscratch.engine.checkpoint import list_checkpoints, load_checkpoint
from tests.conftest import ROOT, make_coco

pytestmark = pytest.mark.slow


def _config(tmp: Path, **over) -> Path:
    ann = make_coco(tmp / "data", num_images=4, size=(64, 64))
    cfg = {"_base_": str(ROOT / "configs/models/cpu.yaml"),
           "model": {"meta_arch": "faster_rcnn",
                     # every anchor and RoI used: sampling picks no random subset, so 1 and 2 processes
                     # see the same RoIs (a fair comparison of the losses)
                     "rpn": {"batch_size_per_image": 100000, "post_nms_top_n_train": 50},
                     "roi": {"batch_size_per_image": 100000}},
           "data": {"train": str(ann), "val": str(ann), "train_scales": [64], "test_scale": 64, "max_size": 64,
                    "num_workers": 0},
           "train": {"iterations": 4, "steps": [3], "warmup_iters": 1, "log_period": 1, "threads": 1,
                     "batch_size": 2},
           "output_dir": str(tmp / "run")}
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    return subprocess.run(launcher + ["-m", "fromscratch", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=ROOT)


def _losses(run: Path, key: str = "loss") -> list[float]:
    return [json.loads(ln)[key] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in ln]


def test_two_gloo_processes_match_one(tmp_path):
    one = _run(["train", str(_config(tmp_path / "one"))])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(["train", str(_config(tmp_path / "two")), "--nproc", "2"])  # fromscratch launches torchrun itself
    assert two.returncode == 0, two.stderr[-3000:]
    assert "threads: 1" in (tmp_path / "two" / "run" / "config.yaml").read_text()
    a, b = _losses(tmp_path / "one" / "run"), _losses(tmp_path / "two" / "run")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=2e-3)
    evals = [json.loads(ln) for ln in (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in ln]
    assert evals and "AP" in evals[-1]["bbox"]  # sharded evaluation, gathered on rank 0
    assert not list((tmp_path / "two" / "run").glob("*rank1*"))  # only rank 0 writes


def test_syncbn_model_trains_on_two_processes(tmp_path):
    cfg = _config(tmp_path, **{"model.backbone.norm": "SyncBN", "model.fpn.norm": "SyncBN",
                               "model.roi.norm": "SyncBN", "model.meta_arch": "mask_rcnn"})
    res = _run(["train", str(cfg)], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = _losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    state = load_checkpoint(tmp_path / "run" / "model_0000004.pth")["model"]
    assert state["backbone.body.bn1.num_batches_tracked"] == 4  # batch statistics were synchronised and used


def test_bf16_autocast_on_cpu(tmp_path):
    res = _run(["train", str(_config(tmp_path, **{"train.amp": "bf16", "model.meta_arch": "mask_rcnn"}))])
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(math.isfinite(x) for x in _losses(tmp_path / "run"))


def _wait_for_iteration(proc: subprocess.Popen, run: Path, k: int, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        m = run / "metrics.jsonl"
        if m.exists() and any(json.loads(ln)["iteration"] >= k for ln in m.read_text().splitlines() if ln.strip()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"finished before iteration {k}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _start(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fromscratch", "train", str(cfg), *extra], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    over = {"train.iterations": 9, "train.steps": [6], "train.checkpoint_period": 1, "train.keep_checkpoints": 2,
            "model.meta_arch": "mask_rcnn", "data.val": None}
    ref = _run(["train", str(_config(tmp_path / "ref", **over))])
    assert ref.returncode == 0, ref.stderr[-3000:]
    cfg = _config(tmp_path / "kill", **over)
    run = tmp_path / "kill" / "run"
    for k in (2, 5):
        proc = _start(cfg, "--resume")
        _wait_for_iteration(proc, run, k)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run / ".model_0000008.pth.deadbeef.tmp").write_bytes(b"half a checkpoint")  # as if killed mid-write
    res = _run(["train", str(cfg), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ref" / "run" / "model_0000009.pth")["model"]
    b = load_checkpoint(run / "model_0000009.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == list(range(1, 10))
    assert len(list_checkpoints(run)) == 2  # keep_checkpoints


def test_sigterm_checkpoints_and_explains(tmp_path):
    cfg = _config(tmp_path, **{"train.iterations": 200, "train.steps": [150], "data.val": None})
    proc = _start(cfg)
    _wait_for_iteration(proc, tmp_path / "run", 2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "stopped by signal at iteration" in err
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts and load_checkpoint(ckpts[-1])["iteration"] >= 2
