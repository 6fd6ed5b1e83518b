"""Runs as SLURM jobs through submitit: one job per planned run (and one for the pre-training stage),
the study's order kept by SLURM job dependencies, preemption and time limits survived by requeueing.

- A job's tasks are training processes: ``tasks_per_node`` (default: one per GPU) on each of ``nodes``
  nodes; each task takes its rank from SLURM (submitit's ``TorchDistributedEnvironment``: the first
  node of the job is the master, the port a function of the job id) and joins the same DDP group as
  under torchrun. One process per GPU, no torchrun inside the job: SLURM already starts one task per
  GPU, and a requeue restarts them all.
- Dependencies: a run that uses the pre-training stage waits for the stage's job; a longer schedule
  waits for the shorter run it branches from (``afterany``: if the shorter run failed, the longer one
  branches from its checkpoint at the branch point if there is one, else trains from 0: same result).
- Preemption and time limits: submitit asks for SIGUSR2 ``signal_delay_s`` before the limit; the
  training loop (engine/hooks.StopOnSignal) checkpoints at the end of the iteration and hands over to
  submitit, which requeues the job (``checkpoint`` below); the requeued job resumes exactly. A job
  requeued by the scheduler itself (SIGTERM) resumes the same way.
- Submitting again skips complete runs and runs whose job is still queued or running; job ids are kept
  in ``runs/<run>/slurm.json``, submitit's files and the job's log in ``runs/<run>/slurm/``.

Job states come from ``squeue`` and the run folders, never from ``sacct`` (clusters without
accounting have none).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fromscratch.config import Config, PretrainConfig, SlurmConfig, load_config
from fromscratch.errors import FromScratchError
from fromscratch.study.plan import PlannedRun, Study, stages
from fromscratch.utils import atomic_write_text

logger = logging.getLogger(__name__)

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise FromScratchError("executor: slurm needs the submitit package (pip install submitit)") from None
    return submitit


def _distributed_env() -> None:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from SLURM when the job has several tasks
    (comm.init_from_env reads them as it does torchrun's)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


class TrainJob:
    """One run of ``fromscratch train --slurm``: train ``config`` (resolved YAML), resuming what is there."""

    def __init__(self, config: str) -> None:
        self.config = config

    def __call__(self) -> str:
        from fromscratch.engine.trainer import train

        _distributed_env()
        result = train(load_config(self.config), resume=True)
        return f"{result['output_dir']}: {result['iterations']} iterations"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on SIGUSR2 (after the loop checkpointed): requeue the same job."""
        return _submitit().helpers.DelayedSubmission(type(self)(self.config))


class StudyJob(TrainJob):
    """One planned run of a study (``run``), or its pre-training stage (``run`` None). ``study`` is the
    study as planned (a dict), ``base`` the folder its relative paths start from."""

    def __init__(self, study: dict[str, Any], base: str, run: dict[str, Any] | None) -> None:
        super().__init__(str(Path(study["output_dir"]) / "configs" / f"{run['name']}.yaml") if run else "")
        self.study, self.base, self.run = study, base, run

    def __call__(self) -> str:
        from fromscratch.study.plan import base_config
        from fromscratch.study.runner import execute, run_pretrain_stage

        study = Study.model_validate({**self.study, "parallel": 1, "nproc": 1})
        study_dir = Path(study.output_dir)
        if self.run is None:
            if int(os.environ.get("SLURM_PROCID", "0")) == 0:
                run_pretrain_stage(study, base_config(study, Path(self.base)), study_dir)
            return "pre-training stage done"
        _distributed_env()
        return execute(PlannedRun(**self.run), load_config(self.config), study, study_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(type(self)(self.study, self.base, self.run))


def executor(folder: Path, s: SlurmConfig, name: str, after: list[str]) -> Any:
    """A submitit executor for one job of ``s``'s shape, depending on the jobs ``after``."""
    ex = _submitit().AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    extra: dict[str, Any] = {"requeue": True}
    for opt in s.extra_sbatch:
        key, eq, value = opt.lstrip("-").partition("=")
        extra[key.replace("-", "_")] = value if eq else True
    if after:
        extra["dependency"] = "afterany:" + ":".join(after)
    params: dict[str, Any] = dict(name=name, nodes=s.nodes, tasks_per_node=s.tasks_per_node or max(1, s.gpus_per_node),
                                  cpus_per_task=s.cpus_per_task, timeout_min=s.time_min,
                                  slurm_signal_delay_s=s.signal_delay_s, slurm_additional_parameters=extra,
                                  slurm_setup=list(s.setup))
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    ex.update_parameters(**params)
    return ex


def queue() -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of this user's jobs in the queue."""
    try:
        p = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FromScratchError(f"squeue failed ({e}): is this a SLURM login node?") from None
    if p.returncode != 0:
        raise FromScratchError(f"squeue failed: {p.stderr.strip()}")
    out = {}
    for line in p.stdout.splitlines():
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        out[jid.strip()] = (state.strip(), reason.strip())
    return out


def job_of(folder: Path) -> dict[str, Any] | None:
    path = folder / "slurm.json"
    return json.loads(path.read_text()) if path.exists() else None


def submit_train(cfg: Config, config_file: Path) -> str:
    """``fromscratch train CONFIG --slurm``: one job training ``cfg`` into its output_dir."""
    out = Path(cfg.output_dir)
    resolved = out / "submitted_config.yaml"
    from fromscratch.config import dump_config

    atomic_write_text(resolved, dump_config(cfg))
    job = executor(out / "slurm", cfg.slurm, f"fromscratch:{out.name}", []).submit(TrainJob(str(resolved)))
    atomic_write_text(out / "slurm.json", json.dumps({"job_id": str(job.job_id), "submitted": time.time(),
                                                       "config": str(config_file)}))
    return str(job.job_id)


def submit_study(runs: list[PlannedRun], study: Study, base: Path, study_dir: Path, s: SlurmConfig) -> dict[str, str]:
    """Submit every incomplete run of ``runs`` not already queued (and the pre-training stage where an
    arm needs it), with dependencies; returns {run name: job id} of the jobs now queued for them."""
    from fromscratch.study.runner import is_complete

    queued = queue()
    jobs: dict[str, str] = {}

    def active(folder: Path) -> str | None:
        rec = job_of(folder)
        return rec["job_id"] if rec and rec["job_id"] in queued else None

    stage_job: dict[str, str] = {}  # arm -> the job of its pre-training stage (one job runs every stage)
    todo = {f: arms for f, (_, arms) in stages(study, study_dir, PretrainConfig()).items()
            if not (f / "accounting.json").exists()}
    if todo:
        folder = study_dir / "pretrain"
        stage = active(folder)
        if stage is None:
            folder.mkdir(parents=True, exist_ok=True)
            job = executor(folder / "slurm", s, "fromscratch:pretrain", []).submit(
                StudyJob(study.model_dump(mode="json"), str(base), None))
            stage = str(job.job_id)
            atomic_write_text(folder / "slurm.json", json.dumps({"job_id": stage, "submitted": time.time()}))
        stage_job = {a: stage for arms in todo.values() for a in arms}
    for r in runs:  # chains in order: a run's prefix is submitted before it
        folder = r.folder(study_dir)
        if is_complete(folder, r.total_iters):
            continue
        jid = active(folder)
        if jid is None:
            after = [j for j in (jobs.get(r.branch_from or ""), stage_job.get(r.arm)) if j]
            folder.mkdir(parents=True, exist_ok=True)
            job = executor(folder / "slurm", s, f"fromscratch:{r.name}", after).submit(
                StudyJob(study.model_dump(mode="json"), str(base), asdict(r)))
            jid = str(job.job_id)
            atomic_write_text(folder / "slurm.json", json.dumps({"job_id": jid, "submitted": time.time(),
                                                                 "after": after}))
            logger.info(f"{r.name}: submitted as job {jid}" + (f" (after {', '.join(after)})" if after else ""))
        jobs[r.name] = jid
    return jobs


def wait(runs: list[PlannedRun], study_dir: Path, jobs: dict[str, str], poll_s: float) -> None:
    """Until none of ``jobs`` is queued; then every run must be complete, else name the ones that are not
    with the end of their logs."""
    from fromscratch.study.runner import is_complete

    while jobs and set(jobs.values()) & set(queue()):
        time.sleep(poll_s)
    failed = [r for r in runs if not is_complete(r.folder(study_dir), r.total_iters)]
    if failed:
        lines = [f"{r.name} (job {jobs.get(r.name, '?')}): {log_tail(r.folder(study_dir), 3)}" for r in failed]
        raise FromScratchError("runs ended without completing; submit the study again to resume them:\n  " +
                               "\n  ".join(lines))


def run_on_slurm(runs: list[PlannedRun], study: Study, base: Path, study_dir: Path, s: SlurmConfig,
                 wait_for_end: bool = True) -> None:
    """Submit ``runs`` (see ``submit_study``) and, unless told not to, wait for them to end."""
    jobs = submit_study(runs, study, base, study_dir, s)
    logger.info(f"{len(jobs)} run(s) queued on SLURM; `fromscratch study STUDY --status` shows them")
    if wait_for_end:
        wait(runs, study_dir, jobs, s.poll_s)


def log_tail(folder: Path, n: int = 5) -> str:
    """The last ``n`` non-empty lines of the run's newest log (SLURM job log, else log.txt)."""
    logs = sorted((folder / "slurm").glob("*_log.*"), key=lambda p: p.stat().st_mtime) + \
        ([folder / "log.txt"] if (folder / "log.txt").exists() else [])
    for log in reversed(logs):
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        if lines:
            return f"{log}: " + " | ".join(lines[-n:])
    return "no log"


def cancel(study_dir: Path) -> list[str]:
    """scancel the queued jobs of the study's incomplete runs (and of its pre-training stage)."""
    plan = json.loads((study_dir / "plan.json").read_text())
    queued = queue()
    folders = [study_dir / "runs" / r["name"] for r in plan.get("grid_trials", []) + plan["runs"]] + \
        sorted(study_dir.glob("pretrain*"))
    ids = [rec["job_id"] for f in folders if (rec := job_of(f)) and rec["job_id"] in queued]
    if ids:
        subprocess.run(["scancel", *ids], check=False)
    return ids
