"""results.csv, and the MLflow / W&B trackers against the real things, offline: an MLflow tracking server
started here on 127.0.0.1 (sqlite store, artifacts in tmp_path), W&B in offline mode read back from its
run folder."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine import trackers
from fromscratch.engine.trackers import ResultsCsv, flat_config, line_metrics, log_report, results_table
from fromscratch.engine.trainer import Trainer, train
from fromscratch.errors import ConfigError
from fromscratch.study.plan import load_study, plan_runs
from tests.conftest import ROOT, make_coco
from tests.engine.test_trainer import TINY
from tests.study.test_study import make_study

SHORT = ["train.iterations=4", "train.steps=[3]", "train.warmup_iters=1", "train.eval_period=2",
         "train.checkpoint_period=2", "model.meta_arch=faster_rcnn"]


def _cfg(tmp_path: Path, *extra: str):
    ann = make_coco(tmp_path / "data", num_images=4)
    return load_config(ROOT / "configs/models/cpu.yaml", TINY + [f"data.train={ann}", f"data.val={ann}",
                                                                 f"output_dir={tmp_path / 'run'}", *SHORT, *extra])


def _lines(run: Path, kind: str) -> list[dict]:
    return [ln for ln in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if ln["type"] == kind]


def _csv(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------- no training


def test_results_table_and_tracker_names_from_metrics_lines():
    ev = {"type": "eval", "iteration": 5, "bbox": {"AP": 1.5, "AP50": 3.0, "per_category": {"1": 2.0}},
          "segm": {"AP": 0.5, "AP50": 1.0}, "samples_seen": {"images": 10, "instances": 20, "pixels": 3000}}
    later = {**ev, "iteration": 9, "keypoints": {"AP": 9.0}}  # the header is the first evaluation's
    header, rows = results_table([{"type": "train", "iteration": 5, "loss": 1.0}, ev, later])
    assert header == ["iteration", "images_seen", "instances_seen", "pixels_seen", "bbox_AP", "bbox_AP50", "segm_AP",
                      "segm_AP50"]
    assert rows == [[5, 10, 20, 3000, 1.5, 3.0, 0.5, 1.0], [9, 10, 20, 3000, 1.5, 3.0, 0.5, 1.0]]
    assert results_table([{"type": "train", "iteration": 1}]) == ([], [])
    assert line_metrics(ev) == {"eval/bbox/AP": 1.5, "eval/bbox/AP50": 3.0, "eval/segm/AP": 0.5, "eval/segm/AP50": 1.0,
                                "samples/images": 10.0, "samples/instances": 20.0, "samples/pixels": 3000.0}
    tr = {"type": "train", "iteration": 2, "loss": 1.0, "loss_classifier": 0.5, "lr": 0.01, "samples_seen": {}}
    assert line_metrics(tr) == {"train/loss": 1.0, "train/loss_classifier": 0.5, "train/lr": 0.01}


def test_a_study_tags_its_runs_for_the_trackers(tmp_path):
    path = make_study(tmp_path)
    s = yaml.safe_load(path.read_text())
    s["overrides"]["tracking.tags"] = {"team": "x"}
    path.write_text(yaml.safe_dump(s))
    study, base = load_study(path)
    runs, configs = plan_runs(study, base, tmp_path / "study", train_size=4)
    r = next(r for r in runs if r.name == "pretrained_2_1x_s0")
    assert configs[r.name].tracking.tags == {"team": "x", "study": "study", "arm": "pretrained", "size": "2",
                                             "schedule": "1x", "seed": 0}
    assert any(o.startswith("tracking.tags=") for o in r.overrides)  # plan.json says it too


def test_an_enabled_tracker_without_its_package_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trackers, "find_spec", lambda name: None)
    cfg = _cfg(tmp_path, "tracking.mlflow.enabled=true")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[mlflow\]'"):
        train(cfg)  # the API: refused in before_train, before the first step
    run = tmp_path / "run"
    assert not _lines(run, "train") and not list(run.glob("model_*.pth"))
    assert main(["train", str(ROOT / "configs/models/cpu.yaml"), *TINY, f"data.train={tmp_path / 'data/ann.json'}",
                 f"output_dir={tmp_path / 'cli'}", "tracking.wandb.enabled=true"]) == 2  # the CLI: before any data
    assert "pip install -e '.[wandb]'" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def test_a_tracker_error_once_training_runs_is_a_warning_and_that_tracker_stops(tmp_path, caplog):
    class Broken(trackers.TrackerHook):
        name = "json"  # an importable module: the package check passes

        def open(self, cfg, out, run_id):
            return "id1"

        def log_lines(self, lines):
            raise OSError("tracking server gone")

        def close(self, out, status):
            raise AssertionError("a stopped tracker is not closed")

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "train", "iteration": 1, "loss": 1.0}) + "\n")
    hook = Broken()
    hook.trainer = SimpleNamespace(out=tmp_path, cfg=None, start_iter=0)
    hook.before_train()  # logs the lines already there: fails
    assert not hook.active and "json: tracking stopped (OSError: tracking server gone)" in caplog.text
    hook.after_step()
    hook.after_train()
    assert json.loads((tmp_path / "tracking.json").read_text()) == {"json": "id1"}


# ---------------------------------------------------------------------------------- results.csv


NOT_IMPORTED = """
import json, sys
from fromscratch.config import load_config
from fromscratch.engine.trainer import train
train(load_config(sys.argv[1], sys.argv[2:]))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "wandb"))))
"""


@pytest.mark.slow
def test_results_csv_one_row_per_evaluation_and_rows_after_a_resume_point_dropped(tmp_path):
    ann = make_coco(tmp_path / "data", num_images=4)
    args = [*TINY, *SHORT, "train.iterations=6", "train.steps=[5]", "train.eval_period=3", "train.checkpoint_period=3",
            f"data.train={ann}", f"data.val={ann}", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-c", NOT_IMPORTED, str(ROOT / "configs/models/cpu.yaml"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []  # tracking off: neither package imported
    run = tmp_path / "run"
    rows, evals = _csv(run), _lines(run, "eval")
    assert [int(r["iteration"]) for r in rows] == [3, 6] == [e["iteration"] for e in evals]
    assert list(rows[0])[:6] == ["iteration", "images_seen", "instances_seen", "pixels_seen", "bbox_AP", "bbox_AP50"]
    for r, e in zip(rows, evals):
        seen = e["samples_seen"]
        assert (int(r["images_seen"]), int(r["pixels_seen"])) == (seen["images"], seen["pixels"])
        assert float(r["bbox_AP"]) == e["bbox"]["AP"] and float(r["bbox_APl"]) == e["bbox"]["APl"]
        assert "bbox_per_category" not in r

    (run / "model_0000006.pth").unlink()  # killed after the checkpoint at 3; evaluate every 2 from there
    tr = Trainer(load_config(ROOT / "configs/models/cpu.yaml", args + ["train.eval_period=2"]), resume=True)
    next(h for h in tr.hooks if isinstance(h, ResultsCsv)).before_train()
    assert [int(r["iteration"]) for r in _csv(run)] == [3]  # the row at 6 went with metrics.jsonl's lines
    tr.train()
    assert [int(r["iteration"]) for r in _csv(run)] == [3, 4, 6] == [e["iteration"] for e in _lines(run, "eval")]


# ---------------------------------------------------------------------------------- MLflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server on 127.0.0.1 (sqlite backend, artifacts proxied into a local folder),
    stopped by its process group at the end."""
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install -e '.[mlflow]' or '.[test]')")
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(tmp / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    for var in ("NO_PROXY", "no_proxy"):  # a proxy set in the environment must not get these requests
        mp.setenv(var, ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer (exit {proc.poll()}):\n"
                            + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()
        mp.undo()


@pytest.mark.slow
def test_mlflow_gets_params_metrics_tags_and_artifacts_and_a_resume_continues_its_run(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    track = ["tracking.mlflow.enabled=true", f"tracking.mlflow.tracking_uri={mlflow_server}",
             "tracking.mlflow.experiment=trackers-test", "tracking.tags.arm=scratch", "tracking.tags.seed=0"]
    cfg = _cfg(tmp_path, *track)
    train(cfg)
    run_dir = tmp_path / "run"
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert len(params) == len(flat_config(cfg))
    assert params["train.iterations"] == "4" and params["model.backbone.name"] == "resnet18"
    assert params["data.train_scales"] == "[64]" and params["tracking.tags.arm"] == "scratch"
    tags = run.data.tags
    assert tags["arm"] == "scratch" and tags["seed"] == "0" and tags["init"] == "scratch"
    assert tags["fromscratch.output_dir"] == str(run_dir.resolve())

    train_lines, evals = _lines(run_dir, "train"), _lines(run_dir, "eval")
    loss = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == [(ln["iteration"], pytest.approx(ln["loss"])) for ln in train_lines]
    for key in ("AP", "AP50", "AP75", "APs"):
        hist = client.get_metric_history(run_id, f"eval/bbox/{key}")
        assert [(m.step, m.value) for m in hist] == [(e["iteration"], pytest.approx(e["bbox"][key])) for e in evals]
    assert client.get_metric_history(run_id, "samples/images")[-1].value == evals[-1]["samples_seen"]["images"]

    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "eval")}
    assert names >= {"config.yaml", "metrics.jsonl", "results.csv", "eval/metrics.json"}
    got = Path(client.download_artifacts(run_id, "results.csv", str(tmp_path / "dl")))
    assert got.read_text() == (run_dir / "results.csv").read_text()

    (run_dir / "model_0000004.pth").unlink()  # killed after the checkpoint at 2: --resume logs into the same run
    train(_cfg(tmp_path, *track, "train.log_period=2"), resume=True)
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"] == run_id
    exp = client.get_experiment_by_name("trackers-test")
    assert len(client.search_runs([exp.experiment_id])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed.train.log_period"] == "2 (was 1)"  # MLflow params cannot change: a tag says it
    assert {m.step for m in client.get_metric_history(run_id, "train/loss")} == {1, 2, 3, 4}


@pytest.mark.slow
def test_a_study_report_is_one_mlflow_run_updated_in_place(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    study = tmp_path / "my-study"
    study.mkdir()
    files = [study / "report.md", study / "verdict.json", study / "gap.png"]
    for f in files:
        f.write_text(f.name)
    cfg = load_config(None, ["tracking.mlflow.enabled=true", f"tracking.mlflow.tracking_uri={mlflow_server}",
                             "tracking.mlflow.experiment=report-test"])
    log_report(cfg.tracking, study, files)
    files[0].write_text("report, rebuilt")
    log_report(cfg.tracking, study, files)
    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("report-test").experiment_id])
    assert run.info.run_name == "my-study-report" and run.data.tags["study"] == "my-study"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.md", "verdict.json", "gap.png"}
    got = Path(client.download_artifacts(run.info.run_id, "report.md", str(tmp_path / "dl")))
    assert got.read_text() == "report, rebuilt"


# ---------------------------------------------------------------------------------- Weights & Biases


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file (a LevelDB-style log of 32 KiB blocks holding W&B's own protobuf
    ``Record`` messages; wandb no longer ships a Python reader for it)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf = data[pos + 7:pos + 7 + n] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + n]  # FULL, FIRST
        pos += 7 + n
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (pip install -e '.[wandb]' or '.[test]')")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.mark.slow
def test_wandb_offline_run_holds_config_history_tags_and_the_run_files(wandb_env, tmp_path):
    cfg = _cfg(tmp_path, "tracking.wandb.enabled=true", f"tracking.wandb.dir={tmp_path / 'wb'}",
               "tracking.wandb.project=trackers-test", "tracking.tags.arm=scratch", "tracking.tags.study=demo")
    train(cfg)
    run_dir = tmp_path / "run"
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    (folder,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}")
    records = wandb_records(folder / f"run-{run_id}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "run" and run.project == "trackers-test" and run.run_group == "demo"
    assert set(run.tags) >= {"arm:scratch", "study:demo", "init:scratch"}
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["train.iterations"] == 4 and config["model.backbone.name"] == "resnet18"
    assert config["data.train_scales"] == [64]
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [(h["iteration"], h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [(ln["iteration"], pytest.approx(ln["loss"])) for ln in _lines(run_dir, "train")]
    aps = [(h["iteration"], h["eval/bbox/AP"]) for h in history if "eval/bbox/AP" in h]
    assert aps == [(e["iteration"], pytest.approx(e["bbox"]["AP"])) for e in _lines(run_dir, "eval")]
    art = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert art.type == "run-folder" and art.name == "run-files"
    assert {c.path for c in art.manifest.contents} == {"config.yaml", "metrics.jsonl", "results.csv",
                                                       "eval/metrics.json"}
    summary = {(u.key or "/".join(u.nested_key)): u.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert json.loads(summary["status"]) == "FINISHED"
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0

    study = tmp_path / "my-study"  # and a study's report, as an artifact of a run of its own
    study.mkdir()
    (study / "report.md").write_text("# report")
    log_report(cfg.tracking, study, [study / "report.md"])
    report_id = json.loads((study / "tracking.json").read_text())["wandb"]
    (folder,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{report_id}")
    records = wandb_records(folder / f"run-{report_id}.wandb")
    art = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert art.type == "study-report" and [c.path for c in art.manifest.contents] == ["report.md"]


def test_write_report_logs_the_report_when_the_study_config_turns_tracking_on(wandb_env, tmp_path):
    from fromscratch.config import dump_config
    from fromscratch.study.report import write_report
    from tests.study.test_study import _synthetic_study

    sd = tmp_path / "study"
    sd.mkdir()
    _synthetic_study(sd, seed_std=1.0)
    first = json.loads((sd / "plan.json").read_text())["runs"][0]["name"]
    cfg = load_config(None, ["tracking.wandb.enabled=true", "tracking.wandb.project=report-test"])
    (sd / "configs").mkdir()
    (sd / "configs" / f"{first}.yaml").write_text(dump_config(cfg))  # the study's resolved run config
    write_report(sd)
    report_id = json.loads((sd / "tracking.json").read_text())["wandb"]
    (folder,) = (sd / "wandb").glob(f"offline-run-*-{report_id}")
    records = wandb_records(folder / f"run-{report_id}.wandb")
    art = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert {c.path for c in art.manifest.contents} >= {"report.md", "verdict.json", "forecast.png"}
