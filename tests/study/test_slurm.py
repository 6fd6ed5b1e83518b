"""Studies and runs as SLURM jobs (submitit), on a real one-node SLURM cluster started by the test on
127.0.0.1 (tests/slurm_cluster.py) and stopped by its process ids. One job is requeued mid-run (as a
preemption does): the study still completes, with metrics identical to the local executor's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fromscratch.cli import main
from fromscratch.engine.logging import read_metrics_lines
from fromscratch.study.runner import run_study
from tests.conftest import ROOT, make_coco
from tests.slurm_cluster import Cluster, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    try:
        c.start()
        os.environ["SLURM_CONF"] = c.env["SLURM_CONF"]  # sbatch, squeue, scontrol of this process and its children
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _study(tmp: Path, name: str, data: Path, **extra) -> Path:
    s = {"detector": str(ROOT / "configs/models/cpu.yaml"),
         "overrides": {"data.train": str(data), "data.val": str(data), "data.train_scales": [64],
                       "data.test_scale": 64, "data.max_size": 64, "data.num_workers": 0, "train.warmup_iters": 2,
                       "train.threads": 1, "model.meta_arch": "faster_rcnn", "train.log_period": 1,
                       "train.checkpoint_period": 4},
         "arms": ["scratch", {"name": "scratch_b", "overrides": {"train.seed": 1}}], "schedules": ["2x", "1x"],
         "data_sizes": ["all"], "seeds": [0], "eval_points": 2, "output_dir": str(tmp / name), **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def _comparable(study: Path) -> dict[str, list[dict]]:
    drop = {"time", "data_time", "images_per_s"}
    return {p.parent.name: [{k: v for k, v in x.items() if k not in drop} for x in read_metrics_lines(p)]
            for p in sorted(study.glob("runs/*/metrics.jsonl"))}


def test_study_on_slurm_survives_a_requeue_and_matches_the_local_executor(cluster, tmp_path, capsys):
    data = make_coco(tmp_path / "data", num_images=4, size=(64, 64))
    local = run_study(_study(tmp_path, "local", data))
    slurm_cfg = {"cpus_per_task": 1, "time_min": 20, "poll_s": 0.5}
    path = _study(tmp_path, "onslurm", data, executor="slurm", slurm=slurm_cfg)
    sd = tmp_path / "onslurm"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_study(path)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    victim = sd / "runs" / "scratch_all_1x_s0"
    end = time.monotonic() + 300
    while time.monotonic() < end and sum('"train"' in x for x in _lines(victim)) < 6:
        time.sleep(0.1)
    job = json.loads((victim / "slurm.json").read_text())["job_id"]
    p = cluster.run("scontrol", "requeue", job)  # what a preemption with requeue does
    assert p.returncode == 0, p.stderr
    end = time.monotonic() + 60  # SLURM holds a requeued job back 2 minutes: let it go at once
    while time.monotonic() < end and "BeginTime" not in cluster.run("squeue", "-h", "-j", job, "-o", "%r").stdout:
        time.sleep(0.2)
    assert cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now").returncode == 0
    t.join(600)
    assert not t.is_alive() and not errors, errors
    log = "".join(f.read_text() for f in (victim / "slurm").glob(f"{job}_0_log.*"))
    assert "resumed from" in log  # the requeued job resumed from a checkpoint, not from 0
    assert _comparable(sd) == _comparable(local)
    # the branched 2x waited for its 1x through a SLURM dependency
    assert json.loads((sd / "runs" / "scratch_all_2x_s0" / "slurm.json").read_text())["after"] == [job]

    assert main(["study", str(path), "--status"]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 4 and "4 done" in out
    before = {p: p.read_text() for p in sd.glob("runs/*/slurm.json")}
    run_study(path)  # submitting again trains nothing that is complete
    assert {p: p.read_text() for p in sd.glob("runs/*/slurm.json")} == before


def _lines(folder: Path) -> list[str]:
    path = folder / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_train_slurm_submits_one_job_and_status_and_cancel(cluster, tmp_path, capsys):
    data = make_coco(tmp_path / "data", num_images=4, size=(64, 64))
    out = tmp_path / "run"
    args = ["train", "configs/models/cpu.yaml", f"data.train={data}", "model.meta_arch=faster_rcnn",
            "data.train_scales=[64]", "data.test_scale=64", "data.max_size=64", "data.num_workers=0",
            "train.threads=1", "train.iterations=4", "train.steps=[3]", "train.warmup_iters=1",
            f"output_dir={out}", "--slurm"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-m", "fromscratch", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "submitted job" in p.stdout, p.stdout + p.stderr
    job = json.loads((out / "slurm.json").read_text())["job_id"]
    end = time.monotonic() + 300
    while time.monotonic() < end and job in cluster.run("squeue", "-h", "-o", "%i").stdout.split():
        time.sleep(0.5)
    assert (out / "model_0000004.pth").exists(), "".join(f.read_text() for f in (out / "slurm").glob("*"))

    # a study that cannot start (its data sits behind a dependency that never ends) shows as pending
    path = _study(tmp_path, "held", data, executor="slurm",
                  slurm={"cpus_per_task": 1, "extra_sbatch": ["--hold"], "poll_s": 0.5})
    assert main(["study", str(path), "--no-wait"]) == 0
    assert main(["study", str(path), "--status"]) == 0
    status = capsys.readouterr().out
    assert "pending" in status and "JobHeldUser" in status
    assert main(["study", str(path), "--cancel"]) == 0
    assert "cancelled 4 job(s)" in capsys.readouterr().out
    end = time.monotonic() + 60
    while time.monotonic() < end and cluster.run("squeue", "-h").stdout.strip():
        time.sleep(0.5)
    assert main(["study", str(path), "--status"]) == 0
    assert "4 failed" in capsys.readouterr().out
