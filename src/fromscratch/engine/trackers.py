"""``results.csv`` and experiment trackers (MLflow, Weights & Biases) as hooks: views of the run folder.

metrics.jsonl stays the record. ``ResultsCsv`` rewrites ``results.csv`` (one row per evaluation) from its
eval lines. A tracker hook logs the lines MetricsWriter appended since it last looked: params are the
resolved config with dotted keys, metrics the train lines (``train/<key>``) and eval lines
(``eval/<iou type>/<stat>``, as TensorBoard) at their iteration with the samples seen (``samples/<kind>``),
tags are ``tracking.tags`` (a study's runs get study, arm, size, schedule and seed) and ``init``, artifacts
the run's config.yaml first and config.yaml, metrics.jsonl, results.csv, eval/metrics.json at the end.
Lines written before the tracker started (a study run branched from a shorter run's checkpoint) are
logged too, so a tracker shows what metrics.jsonl holds.

Each tracker's run id is kept in the run folder's ``tracking.json``: a resumed run logs into the same
tracker run. ``mlflow`` and ``wandb`` are imported inside the hooks, on rank 0, only when enabled; a
missing package is a ``ConfigError`` naming the extra before the first step. Once training has started
a tracker error is a warning and that tracker stops: the run folder still has everything.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fromscratch import comm
from fromscratch.config import Config, TrackingConfig
from fromscratch.engine.hooks import HookBase
from fromscratch.engine.logging import read_metrics_lines
from fromscratch.errors import ConfigError, Stopped
from fromscratch.utils import atomic_write_text

logger = logging.getLogger(__name__)

TRACKERS = ("mlflow", "wandb")  # each the name of its config block, its package and its pip extra
STATE_FILE = "tracking.json"  # {tracker: its run id} in a run folder (and a study folder, for the report)
RESULTS_FILE = "results.csv"
ARTIFACTS = ("config.yaml", "metrics.jsonl", RESULTS_FILE, "eval/metrics.json", "early_stopped.json")
SAMPLE_KINDS = ("images", "instances", "pixels")


# ---------------------------------------------------------------------------------- results.csv


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(line: dict[str, Any]) -> list[tuple[str, str]]:
    """(IoU type, stat) of every number of an eval line: AP, AP50, AP75, APs... (per-category AP left out)."""
    return [(t, k) for t, m in line.items() if isinstance(m, dict) and t != "samples_seen"
            for k, v in m.items() if _number(v)]


def results_table(lines: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of results.csv from metrics.jsonl lines: one row per eval line, the columns fixed
    by the first (iteration, samples seen, then ``<iou type>_<stat>`` for each of its numbers)."""
    evals = [ln for ln in lines if ln.get("type") == "eval"]
    if not evals:
        return [], []
    stats = _stats(evals[0])
    header = ["iteration", *(f"{k}_seen" for k in SAMPLE_KINDS), *(f"{t}_{k}" for t, k in stats)]
    rows = [[ln["iteration"], *((ln.get("samples_seen") or {}).get(k, "") for k in SAMPLE_KINDS),
             *((ln.get(t) or {}).get(k, "") for t, k in stats)] for ln in evals]
    return header, rows


def write_results_csv(out: Path) -> Path | None:
    """Rewrite ``out/results.csv`` (atomically) from ``out/metrics.jsonl``; no evaluation yet: no file."""
    header, rows = results_table(read_metrics_lines(out / "metrics.jsonl"))
    path = out / RESULTS_FILE
    if not header:
        path.unlink(missing_ok=True)  # a resume to before the first evaluation drops every row
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue(), "results table")
    return path


class ResultsCsv(HookBase):
    """``results.csv``: one row per evaluation (ultralytics' results.csv, timm's summary.csv), rewritten
    from metrics.jsonl's eval lines at each evaluation and at the start, so a resumed run drops the rows
    after its checkpoint as metrics.jsonl does."""

    def before_train(self) -> None:
        if comm.is_main():
            write_results_csv(self.trainer.out)

    def after_step(self) -> None:
        tr = self.trainer
        if comm.is_main() and tr.metrics_iteration == tr.done and tr.metrics:
            write_results_csv(tr.out)


# ---------------------------------------------------------------------------------- what trackers log


def enabled_trackers(tracking: TrackingConfig) -> list[str]:
    return [name for name in TRACKERS if getattr(tracking, name).enabled]


def missing_package(name: str) -> str | None:
    """Why tracker ``name`` cannot run here (its package is not installed), or None; imports nothing."""
    if find_spec(name) is not None:
        return None
    return (f"tracking.{name}.enabled is true but the {name} package is not installed: install the extra "
            f"(pip install -e '.[{name}]', or pip install {name}) or set tracking.{name}.enabled=false")


def require_trackers(tracking: TrackingConfig) -> None:
    """A ``ConfigError`` naming the extra to install for each enabled tracker whose package is missing."""
    problems = [p for p in map(missing_package, enabled_trackers(tracking)) if p]
    if problems:
        raise ConfigError("; ".join(problems))


def flat_config(cfg: Config) -> dict[str, Any]:
    """The resolved config with dotted keys (``train.base_lr``), values as in config.yaml."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(cfg.model_dump(mode="json"), "")
    return out


def run_tags(cfg: Config) -> dict[str, str]:
    """``init`` (scratch / pretrained) and ``tracking.tags`` (a study's: study, arm, size, schedule, seed)."""
    init = "scratch" if cfg.model.backbone.weights is None else "pretrained"
    return {"init": init, **{k: str(v) for k, v in cfg.tracking.tags.items()}}


def line_metrics(line: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl line under tracker names: ``train/loss``, ``train/lr``...,
    ``eval/bbox/AP``, ``eval/segm/AP50``..., and ``samples/images`` (``instances``, ``pixels``)."""
    out: dict[str, float] = {}
    if line.get("type") == "train":
        out = {f"train/{k}": float(v) for k, v in line.items() if k != "iteration" and _number(v)}
    elif line.get("type") == "eval":
        out = {f"eval/{t}/{k}": float(line[t][k]) for t, k in _stats(line)}
    samples = line.get("samples_seen") or {}
    out.update({f"samples/{k}": float(samples[k]) for k in SAMPLE_KINDS if _number(samples.get(k))})
    return out


def read_state(folder: Path) -> dict[str, str]:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, name: str, run_id: str) -> None:
    atomic_write_text(folder / STATE_FILE, json.dumps({**read_state(folder), name: run_id}, indent=1), "tracker ids")


class MetricsTail:
    """The whole lines appended to a metrics.jsonl since the last call (from its start, or its end)."""

    def __init__(self, path: Path, from_end: bool) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0

    def new_lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(whole)
        out = []
        for row in whole.splitlines():
            try:
                obj = json.loads(row)
            except ValueError:
                continue
            if isinstance(obj, dict) and "type" in obj and "iteration" in obj:
                out.append(obj)
        return out


def end_status() -> str:
    """How the run is ending, seen from an ``after_train``: FINISHED, KILLED (a signal) or FAILED."""
    exc = sys.exc_info()[1]
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (Stopped, KeyboardInterrupt)) else "FAILED"


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


# ---------------------------------------------------------------------------------- the hooks


class TrackerHook(HookBase):
    """One tracker run per run folder, on rank 0. Subclasses open (or resume) the tracker's run, log
    metrics.jsonl lines, and close it with the run folder's files."""

    name = ""

    def __init__(self) -> None:
        self.active = False

    # what a tracker implements
    def open(self, cfg: Config, out: Path, run_id: str | None) -> str:
        """Start (or resume ``run_id``) the tracker's run, log params and tags; returns its id."""
        raise NotImplementedError

    def log_lines(self, lines: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self, out: Path, status: str) -> None:
        """Log the run folder's files and end the tracker's run."""
        raise NotImplementedError

    def abort(self) -> None:
        """End the tracker's run after an error, if that can be done locally (nothing for a server)."""

    # the hook
    def before_train(self) -> None:
        problem = missing_package(self.name)
        if problem:
            raise ConfigError(problem)
        tr = self.trainer
        if not comm.is_main():
            return
        stored = read_state(tr.out).get(self.name) if tr.start_iter > 0 else None  # a fresh run: a new one
        run_id = self.open(tr.cfg, tr.out, stored)
        write_state(tr.out, self.name, run_id)
        self.active = True
        # a resumed tracker run has the lines up to the checkpoint; a new one gets all (a branched prefix)
        self.tail = MetricsTail(tr.out / "metrics.jsonl", from_end=run_id == stored)
        self.after_step()

    def after_step(self) -> None:
        if not self.active:
            return
        try:
            lines = self.tail.new_lines()
            if lines:
                self.log_lines(lines)
        except Exception as e:  # noqa: BLE001 - the run goes on; its folder has every number
            self._fail(e)

    def after_train(self) -> None:
        if not self.active:
            return
        status = end_status()
        self.after_step()
        if self.active:
            try:
                self.close(self.trainer.out, status)
            except Exception as e:  # noqa: BLE001
                self._fail(e)
        self.active = False

    def _fail(self, e: Exception) -> None:
        self.active = False
        try:
            self.abort()
        except Exception:  # noqa: BLE001 - already failing: the warning below says so
            pass
        logger.warning(f"{self.name}: tracking stopped ({_why(e)}); the run goes on and its folder "
                       f"({self.trainer.out}) keeps every number")


def _mlflow_experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a run in parallel
        return client.get_experiment_by_name(name).experiment_id


def _mlflow_run(client: Any, run_id: str | None) -> Any:
    """The stored run when the tracking server still has it, else None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        logger.warning(f"mlflow: run {run_id} (tracking.json) not found on this tracking server; starting a new one")
        return None


class MLflowTracker(TrackerHook):
    """Logs to an MLflow tracking server or store (``tracking.mlflow``) through ``MlflowClient``."""

    name = "mlflow"

    def open(self, cfg: Config, out: Path, run_id: str | None) -> str:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        m = cfg.tracking.mlflow
        self.client = MlflowClient(tracking_uri=m.tracking_uri)
        params = {k: _short(v if isinstance(v, str) else json.dumps(v), 6000) for k, v in flat_config(cfg).items()}
        tags = {**run_tags(cfg), "fromscratch.output_dir": str(out.resolve())}
        run = _mlflow_run(self.client, run_id)
        if run is None:
            run = self.client.create_run(_mlflow_experiment(self.client, m.experiment), run_name=m.run_name or out.name)
        else:  # resumed: params are immutable in MLflow, so a value changed on resume (a longer schedule) is a tag
            self.client.update_run(run.info.run_id, status="RUNNING")
            old = run.data.params
            tags.update({f"resumed.{k}": _short(f"{v} (was {old[k]})", 8000) for k, v in params.items()
                         if k in old and old[k] != v})
            params = {k: v for k, v in params.items() if k not in old}
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_artifact(self.run_id, str(out / "config.yaml"))
        return self.run_id

    def log_lines(self, lines: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, RunTag

        ms = int(time.time() * 1000)
        metrics = [Metric(k, v, ms, ln["iteration"]) for ln in lines for k, v in line_metrics(ln).items()]
        tags = [RunTag("early_stop_iteration", str(ln["iteration"])) for ln in lines if ln["type"] == "early_stop"]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])

    def close(self, out: Path, status: str) -> None:
        for rel in ARTIFACTS:
            if (out / rel).is_file():
                self.client.log_artifact(self.run_id, str(out / rel), str(Path(rel).parent) if "/" in rel else None)
        self.client.set_terminated(self.run_id, status)


class WandbTracker(TrackerHook):
    """Logs to Weights & Biases (``tracking.wandb``; ``mode: offline`` writes files for ``wandb sync``).
    Metrics are plotted against ``iteration`` (W&B's own step only counts log calls)."""

    name = "wandb"

    def open(self, cfg: Config, out: Path, run_id: str | None) -> str:
        import wandb

        w = cfg.tracking.wandb
        tags = run_tags(cfg)
        folder = Path(w.dir) if w.dir else out
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=w.project, entity=w.entity, mode=w.mode, dir=str(folder),
                              name=w.run_name or out.name, id=run_id, resume="allow" if run_id else None,
                              group=tags.get("study"), job_type="train",
                              tags=[_short(f"{k}:{v}", 64) for k, v in tags.items()])
        self.run.config.update(flat_config(cfg), allow_val_change=True)
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")
        return self.run.id

    def log_lines(self, lines: list[dict[str, Any]]) -> None:
        for ln in lines:
            if ln["type"] == "early_stop":
                self.run.summary["early_stop_iteration"] = ln["iteration"]
            metrics = line_metrics(ln)
            if metrics:
                self.run.log({"iteration": ln["iteration"], **metrics})

    def close(self, out: Path, status: str) -> None:
        import wandb

        art = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{self.run.name or out.name}-files"), type="run-folder")
        for rel in ARTIFACTS:
            if (out / rel).is_file():
                art.add_file(str(out / rel), name=rel)
        self.run.log_artifact(art)
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def abort(self) -> None:
        self.run.finish(exit_code=1)  # a later run in this process (a study) starts a run of its own


def tracker_hooks(cfg: Config) -> list[HookBase]:
    """The enabled trackers' hooks (none, and nothing imported, while ``tracking`` is off)."""
    kinds = {"mlflow": MLflowTracker, "wandb": WandbTracker}
    return [kinds[name]() for name in enabled_trackers(cfg.tracking)]


# ---------------------------------------------------------------------------------- a study's report


def log_report(tracking: TrackingConfig, study_dir: Path, files: list[Path]) -> None:
    """A study's report (report.md, verdict.json, plots) as artifacts of one tracker run per study folder,
    the same run each time the report is rebuilt (its id in the study's ``tracking.json``). The report is
    written first: a tracker that fails here is a warning."""
    study_dir = Path(study_dir)
    for name in enabled_trackers(tracking):
        try:
            problem = missing_package(name)
            if problem:
                raise ConfigError(problem)
            report = _mlflow_report if name == "mlflow" else _wandb_report
            write_state(study_dir, name, report(tracking, study_dir, [f for f in files if Path(f).is_file()],
                                                read_state(study_dir).get(name)))
        except Exception as e:  # noqa: BLE001
            logger.warning(f"report: not logged to {name} ({_why(e)})")


def _mlflow_report(tracking: TrackingConfig, study_dir: Path, files: list[Path], run_id: str | None) -> str:
    from mlflow.tracking import MlflowClient

    m = tracking.mlflow
    client = MlflowClient(tracking_uri=m.tracking_uri)
    run = _mlflow_run(client, run_id) or client.create_run(
        _mlflow_experiment(client, m.experiment), run_name=f"{study_dir.name}-report",
        tags={"study": study_dir.name, "kind": "report", "fromscratch.study_dir": str(study_dir.resolve())})
    for f in files:
        client.log_artifact(run.info.run_id, str(f))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _wandb_report(tracking: TrackingConfig, study_dir: Path, files: list[Path], run_id: str | None) -> str:
    import wandb

    w = tracking.wandb
    folder = Path(w.dir) if w.dir else study_dir
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=w.project, entity=w.entity, mode=w.mode, dir=str(folder), name=f"{study_dir.name}-report",
                     id=run_id, resume="allow" if run_id else None, group=study_dir.name, job_type="report",
                     tags=[_short(f"study:{study_dir.name}", 64)])
    art = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{study_dir.name}-report"), type="study-report")
    for f in files:
        art.add_file(str(f), name=Path(f).name)
    run.log_artifact(art)
    run.finish()
    return run.id
