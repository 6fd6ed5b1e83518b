"""`fromscratch study STUDY --status`: each run's state from its folder and, for SLURM jobs, the queue.

done (its last iteration, or an early stop), running (iteration and ETA from its metrics.jsonl),
pending (the scheduler's reason), failed or interrupted (the last lines of its log), not started.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from fromscratch.engine.logging import read_metrics_lines
from fromscratch.study.cost import hms
from fromscratch.study.runner import is_complete
from fromscratch.study.slurm import job_of, log_tail, queue


def run_state(folder: Path, total: int, queued: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(state, detail) of one run folder."""
    lines = read_metrics_lines(folder / "metrics.jsonl")
    train = [x for x in lines if x["type"] == "train"]
    evals = [x for x in lines if x["type"] == "eval"]
    it = train[-1]["iteration"] if train else 0
    if is_complete(folder, total):
        aps = {k: round(v["AP"], 2) for k, v in (evals[-1] if evals else {}).items()
               if isinstance(v, dict) and "AP" in v}
        return "done", f"{it}/{total} iterations" + (f", final AP {aps}" if aps else "")
    job = job_of(folder)
    jid = job["job_id"] if job else None
    if jid and jid in queued:
        state, reason = queued[jid]
        if state != "RUNNING":
            return state.lower(), f"job {jid}" + (f" ({reason})" if reason and reason != "None" else "")
    else:
        state = ""
    if train and (state == "RUNNING" or time.time() - (folder / "metrics.jsonl").stat().st_mtime < 300):
        step = statistics.median(x["time"] for x in train[-10:])
        return "running", (f"iteration {it}/{total}, about {hms((total - it) * step)} left"
                           + (f" (job {jid})" if jid else ""))
    if not folder.exists() or (not train and not job):
        return "not started", ""
    return "failed" if job else "interrupted", f"at iteration {it}/{total}" + (f", job {jid}" if jid else "") + \
        f"; {log_tail(folder, 3)}"


def status_lines(study_dir: Path) -> list[str]:
    plan = json.loads((study_dir / "plan.json").read_text())
    runs = plan.get("grid_trials", []) + plan["runs"]  # the grid's trials run first
    slurm = any((study_dir / "runs" / r["name"] / "slurm.json").exists() for r in runs)
    queued = queue() if slurm else {}
    trials = f" (and {len(plan['grid_trials'])} grid trials)" if plan.get("grid_trials") else ""
    out = [f"{study_dir}: {len(plan['runs'])} runs{trials}"]
    counts: dict[str, int] = {}
    for r in runs:
        state, detail = run_state(study_dir / "runs" / r["name"], r["total_iters"], queued)
        counts[state] = counts.get(state, 0) + 1
        out.append(f"  {r['name']:<28} {state:<11} {detail}")
    out.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return out
