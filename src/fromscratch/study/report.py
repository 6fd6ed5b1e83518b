"""`fromscratch report STUDY_DIR`: tables, plots and a verdict, rebuilt from run folders alone.

The verdict (study/verdict.py) is an equivalence decision with a margin δ (``margin``): for each data
size, scratch is "within ±δ" of pre-training only when the 90% interval of the gap (best vs best: a
paired bootstrap over validation images plus the seed spread, study/stats.py) lies inside (-δ, δ); an
arm is "ahead" only when the interval lies beyond δ; otherwise the report says "undecided" and what
would decide it. Every metric's gap (box AP, AP50, AP75, mask AP, keypoint AP) gets its interval, and
the forecast (study/forecast.py) names the schedule from which scratch is expected to catch up.
"""
from __future__ import annotations

import json
import re
import statistics
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.study.accounting import KINDS, fmt, pretrain_samples, read_metrics, total_samples
from fromscratch.study.adaptive import summary_lines
from fromscratch.study.grid import report_lines as grid_lines
from fromscratch.study.plan import base_name, study_validation
from fromscratch.study.verdict import augmentation_table, gap_tables, verdict_text, verdicts
from fromscratch.utils import atomic_write_text

METRICS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"), ("keypoints", "AP"))


@dataclass
class RunResult:
    run: dict[str, Any]
    train: list[dict]
    evals: list[dict]
    pre: dict[str, Any]
    branched: dict | None = None

    early_stop: dict | None = None

    @property
    def final(self) -> dict | None:
        """The run's last evaluation, if the run is complete (its last iteration, or an early stop)."""
        last = self.evals[-1] if self.evals else None
        end = self.early_stop["iteration"] if self.early_stop else self.run["total_iters"]
        return last if last and last["iteration"] == end else None


@dataclass
class Cell:
    """One (arm, size, schedule) over seeds."""

    values: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # the plan's runs, one per seed, in the order of values

    def mean(self, key: str = "bbox.AP") -> float:
        v = self.values.get(key, [])
        return statistics.fmean(v) if v else float("nan")

    def std(self, key: str = "bbox.AP") -> float:
        v = self.values.get(key, [])
        return statistics.stdev(v) if len(v) > 1 else 0.0

    def text(self, key: str = "bbox.AP") -> str:
        v = self.values.get(key, [])
        if not v:
            return "-"
        return f"{self.mean(key):.1f}" + (f" ± {self.std(key):.1f}" if len(v) > 1 else "")


def stage_lines(study_dir: Path) -> list[str]:
    """The pre-training stages the study ran: method, images, epochs, time, and their quality check
    (held-out top-1 of the classifier; k-NN top-1 on object crops for a self-supervised stage)."""
    out = []
    for path in sorted(study_dir.glob("pretrain*/accounting.json")):
        a = json.loads(path.read_text())
        if a.get("knn_top1") is not None:
            check = f"k-NN top-1 on val object crops {a['knn_top1']:.3f} (random init {a['knn_top1_random_init']:.3f})"
        elif a.get("val_top1") is not None:
            check = f"held-out top-1 {a['val_top1']:.3f}"
        else:
            check = "no quality check (no labels)"
        n = f"{a['unlabeled_images']} unlabeled images, " if "unlabeled_images" in a else ""
        how = (f" ({a['epochs']:.2f} epochs at {a.get('image_size', '?')} px)" if "epochs" in a else "") + \
            (f" in {a['wall_time_s']} s" if "wall_time_s" in a else "")
        out.append(f"- `{path.parent.name}`: {a.get('method', 'supervised')} on {a.get('source', '?')}, {n}"
                   f"{fmt(a.get('images', 0))} images seen{how}; {check}")
    return ["", "## Pre-training stages", ""] + out if out else []


def load_results(study_dir: Path, only: Collection[str] | None = None) -> tuple[dict, list[RunResult]]:
    """The plan and every planned run's metrics; ``only`` keeps those runs (an adaptive round's)."""
    plan = json.loads((study_dir / "plan.json").read_text())
    if only is None and plan["study"].get("adaptive") and (study_dir / "adaptive.json").exists():
        only = json.loads((study_dir / "adaptive.json").read_text())["ran"]  # what the adaptive rounds chose
    if only is not None:
        keep = set(only)
        plan = {**plan, "runs": [r for r in plan["runs"] if r["name"] in keep]}
    arms = {a["name"]: a for a in plan["study"]["arms"]}
    results = []
    for r in plan["runs"]:
        folder = study_dir / "runs" / r["name"]
        train, evals = read_metrics(folder)
        branch = json.loads((folder / "branch.json").read_text()) if (folder / "branch.json").exists() else None
        early = json.loads((folder / "early_stopped.json").read_text()) \
            if (folder / "early_stopped.json").exists() else None
        pre = pretrain_samples(arms[r["arm"]].get("weights"), study_dir, base_name(arms[r["arm"]]))
        results.append(RunResult(r, train, evals, pre, branch, early))
    return plan, results


def cells(results: list[RunResult]) -> dict[tuple[str, str, str], Cell]:
    out: dict[tuple[str, str, str], Cell] = {}
    for res in results:
        fin = res.final
        if fin is None:
            continue
        c = out.setdefault((res.run["arm"], str(res.run["size"]), res.run["schedule"]), Cell())
        for t, k in METRICS:
            if t in fin:
                c.values.setdefault(f"{t}.{k}", []).append(fin[t][k])
        c.samples.append(total_samples(fin["samples_seen"], res.pre))
        c.runs.append({**res.run, "final_iteration": fin["iteration"]})
    return out


def tables(plan: dict, table: dict[tuple[str, str, str], Cell]) -> list[str]:
    study = plan["study"]
    scheds = sorted(study["schedules"], key=parse_multiplier)
    arms = [a["name"] for a in study["arms"]]
    sizes = [str(s) for s in study["data_sizes"]]
    lines = ["## Box AP by schedule (like the paper's Table 1)", "",
             "| data | arm | " + " | ".join(scheds) + " |", "|---|---|" + "---|" * len(scheds)]
    for size in sizes:
        for arm in arms:
            lines.append(f"| {size} | {arm} | " + " | ".join(table[(arm, size, s)].text() if (arm, size, s) in table
                                                           else "-" for s in scheds) + " |")
    keys = [f"{t}.{k}" for t, k in METRICS if any(f"{t}.{k}" in c.values for c in table.values())]
    lines += ["", "## Final numbers per run (like the paper's Table 2; mean ± std over seeds)", "",
              "| data | arm | schedule | " + " | ".join(keys) + " | images seen (incl. pre-training) |",
              "|---|---|---|" + "---|" * (len(keys) + 1)]
    for (arm, size, s), c in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0], parse_multiplier(kv[0][2]))):
        imgs = statistics.fmean(x["images"] for x in c.samples)
        lines.append(f"| {size} | {arm} | {s} | " + " | ".join(c.text(k) for k in keys) + f" | {fmt(imgs)} |")
    return lines


def final_loss(res: RunResult, tail: float = 0.1) -> float | None:
    """Mean training loss over the last ``tail`` of a finished run's iterations (a smoothed final loss)."""
    if res.final is None or not res.train:
        return None
    end = res.final["iteration"]
    last = [t["loss"] for t in res.train if t["iteration"] > end * (1 - tail)] or [res.train[-1]["loss"]]
    return statistics.fmean(last)


def loss_table(plan: dict, results: list[RunResult]) -> list[str]:
    """Markdown: the final training loss next to the final val AP, per size and arm at the longest finished
    schedule (the paper's Fig. 8: pre-training regularizes only if scratch fits the training set as well
    but generalizes worse)."""
    scheds = sorted(plan["study"]["schedules"], key=parse_multiplier)
    rows: dict[tuple[str, str], list[RunResult]] = {}
    for res in results:
        if res.final is not None:
            key = (str(res.run["size"]), res.run["arm"])
            have = rows.get(key)
            rank = scheds.index(res.run["schedule"])
            if have is None or rank > scheds.index(have[0].run["schedule"]):
                rows[key] = [res]
            elif rank == scheds.index(have[0].run["schedule"]):
                have.append(res)
    if not rows:
        return []

    def ms(v: list[float], digits: int) -> str:
        return f"{statistics.fmean(v):.{digits}f}" + (f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else "")

    lines = ["## Training loss and val AP (like the paper's Fig. 8)", "",
             "Final training loss (mean over the last 10% of iterations) beside the final val box AP, at each arm's "
             "longest finished schedule (mean ± std over seeds): pre-training acts as a regularizer only where "
             "scratch fits the training images about as well but scores lower on the validation images.", "",
             "| data | arm | schedule | seeds | final training loss | val box AP |", "|---|---|---|---|---|---|"]
    sizes = [str(x) for x in plan["study"]["data_sizes"]]
    arms = [a["name"] for a in plan["study"]["arms"]]
    for (size, arm), rs in sorted(rows.items(), key=lambda kv: (sizes.index(kv[0][0]), arms.index(kv[0][1]))):
        losses = [x for x in (final_loss(r) for r in rs) if x is not None]
        aps = [r.final["bbox"]["AP"] for r in rs if r.final and "bbox" in r.final]
        if losses and aps:
            lines.append(f"| {size} | {arm} | {rs[0].run['schedule']} | {len(rs)} | {ms(losses, 3)} | {ms(aps, 1)} |")
    return lines + [""]


def write_suite_report(suite_dir: Path) -> tuple[Path, list[str]]:
    """One report for a suite: each part's report rebuilt, then put together (headings one level down,
    plot links pointing into the part's folder), with every part's verdict at the top."""
    info = json.loads((suite_dir / "suite.json").read_text())
    all_texts: list[str] = []
    body: list[str] = []
    for part in info["parts"]:
        if not (suite_dir / part / "plan.json").exists():
            body += [f"## {part}", "", "not run yet", ""]
            continue
        path, texts = write_report(suite_dir / part)
        all_texts += [f"{part}: {t}" for t in texts]
        for ln in path.read_text().splitlines():
            if ln.startswith("#"):
                ln = "#" + ln
            body.append(re.sub(r"\]\(([^)/]+\.png)\)", rf"]({part}/\1)", ln))
        body.append("")
    lines = [f"# Study report: {info['suite'].get('description') or suite_dir.name}", "",
             f"{len(info['parts'])} parts: " + ", ".join(f"[{p}]({p}/report.md)" for p in info["parts"]) + ".",
             "", "## Verdicts", ""]
    lines += [f"- {t}" for t in all_texts] or ["- not enough finished runs for a verdict"]
    path = suite_dir / "report.md"
    atomic_write_text(path, "\n".join(lines + [""] + body) + "\n", "report")
    return path, all_texts


def round_verdicts(study_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    """An adaptive round's verdicts: the report rebuilt from the named runs only, whatever else the
    folder holds (runs an earlier attempt finished, an older adaptive.json)."""
    write_report(study_dir, names)
    return json.loads((Path(study_dir) / "verdict.json").read_text())


def write_report(study_dir: str | Path, only: Collection[str] | None = None) -> tuple[Path, list[str]]:
    """Build ``report.md`` and its PNG plots from the run folders; returns the path and verdicts.
    A suite's folder (``suite.json``) gets every part's report and one report that joins them.
    ``only`` names the runs to report (an adaptive round's); by default an adaptive study reports the
    runs its rounds chose (``adaptive.json``), so finished runs it skipped, left in the folder by an
    earlier full or differently-decided run, never enter its verdict."""
    from fromscratch.study.plots import forecast_figure, plot_all

    study_dir = Path(study_dir)
    if (study_dir / "suite.json").exists():
        return write_suite_report(study_dir)
    plan, results = load_results(study_dir, only)
    table = cells(results)
    cfg, val = study_validation(plan, study_dir)  # read once: the verdict's bootstrap and the figures
    vs = verdicts(plan, table, study_dir, cfg, val)
    texts = [verdict_text(v) for v in vs]
    figs = plot_all(plan, results, study_dir, val)
    if forecast_figure(vs, table, study_dir):
        figs.append("forecast.png")
    done = sum(1 for r in results if r.final)
    lines = [f"# Study report: {plan['study'].get('description') or study_dir.name}", "",
             f"{done} of {len(results)} runs complete. Detector: `{plan['detector']}`; training images: "
             f"{plan['train_size']}; seeds: {plan['study']['seeds']}.", "", "## Verdict", ""]
    lines += [f"- {t}" for t in texts] or ["- not enough finished runs for a verdict"]
    lines += [""] + augmentation_table(vs) + tables(plan, table) + [""] + gap_tables(vs) + [""]
    lines += loss_table(plan, results)
    lines += summary_lines(study_dir) if plan["study"].get("adaptive") else []  # not a stale one of an earlier run
    lines += grid_lines(study_dir)
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in figs]
    lines += ["", "## Sample accounting", "",
              "Samples seen count every image, instance and pixel each time it is seen (the paper's Fig. 2); "
              "a pre-trained arm starts with its pre-training's samples:", ""]
    for a in plan["study"]["arms"]:
        pre = next((r.pre for r in results if r.run["arm"] == a["name"]), None)
        if pre:
            est = " (estimate from the published recipe)" if pre.get("estimate") else ""
            lines.append(f"- {a['name']}: " + ", ".join(f"{fmt(pre[k])} {k}" for k in KINDS) + est)
    lines += stage_lines(study_dir)
    branched = [r for r in results if r.branched]
    if branched:
        lines += ["", "## Shared prefixes", "", "These runs started from a shorter schedule's checkpoint at its first "
                  "LR drop (same LR and batches until there, so the result is the same as training from 0):", ""]
        lines += [f"- {r.run['name']}: from {r.branched['from']} at iteration {r.branched['iteration']}"
                  for r in branched]
    path = study_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n", "report")
    atomic_write_text(study_dir / "verdict.json", json.dumps(vs, indent=1), "verdict")
    atomic_write_text(study_dir / "cells.json", json.dumps(
        {"|".join(k): {"values": c.values, "seeds": [r["seed"] for r in c.runs]} for k, c in table.items()}, indent=1))
    if cfg is not None:  # tracking on in the study's config: the report's files as a tracker run's artifacts
        from fromscratch.engine.trackers import log_report

        log_report(cfg.tracking, study_dir, [path, study_dir / "verdict.json", *(study_dir / f for f in figs)])
    return path, texts
