"""`fromscratch report STUDY_DIR`: tables, plots and a verdict, rebuilt from run folders alone.

The verdict is computed, not written: for each data size, scratch "matches" a pre-trained arm when its
best AP over schedules is within ``max(tolerance, 2 x seed std)`` of the pre-trained arm's best
(the paper's run-to-run spread on small sets is 0.5-2 AP); then the report names the first schedule
where it does and the extra samples it took. Otherwise pre-training wins by the gap (the paper's
breakdown regime, 1k-3.5k COCO images). When neither arm reaches twice the tolerance, the report
says there was too little learning to tell instead of declaring a tie.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.study.accounting import KINDS, fmt, pretrain_samples, read_metrics, total_samples

METRICS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"), ("keypoints", "AP"))


@dataclass
class RunResult:
    run: dict[str, Any]
    train: list[dict]
    evals: list[dict]
    pre: dict[str, Any]
    branched: dict | None = None

    @property
    def final(self) -> dict | None:
        last = self.evals[-1] if self.evals else None
        return last if last and last["iteration"] == self.run["total_iters"] else None


@dataclass
class Cell:
    """One (arm, size, schedule) over seeds."""

    values: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)

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


def load_results(study_dir: Path) -> tuple[dict, list[RunResult]]:
    plan = json.loads((study_dir / "plan.json").read_text())
    weights = {a["name"]: a.get("weights") for a in plan["study"]["arms"]}
    results = []
    for r in plan["runs"]:
        folder = study_dir / "runs" / r["name"]
        train, evals = read_metrics(folder)
        branch = json.loads((folder / "branch.json").read_text()) if (folder / "branch.json").exists() else None
        results.append(RunResult(r, train, evals, pretrain_samples(weights[r["arm"]], study_dir), branch))
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
    return out


def verdicts(plan: dict, table: dict[tuple[str, str, str], Cell]) -> list[dict[str, Any]]:
    """Per data size and pre-trained arm: does scratch catch up, from which schedule, at what cost?"""
    study = plan["study"]
    arms = study["arms"]
    scratch = next((a["name"] for a in arms if not a.get("weights")), None)
    scheds = sorted(study["schedules"], key=parse_multiplier)
    out = []
    for size in [str(s) for s in study["data_sizes"]]:
        for arm in [a["name"] for a in arms if a.get("weights")]:
            pre = {s: table.get((arm, size, s)) for s in scheds}
            scr = {s: table.get((scratch, size, s)) for s in scheds} if scratch else {}
            pre_done = {s: c for s, c in pre.items() if c}
            scr_done = {s: c for s, c in scr.items() if c}
            if not pre_done or not scr_done:
                continue
            best_pre_s = max(pre_done, key=lambda s: pre_done[s].mean())
            best_pre = pre_done[best_pre_s].mean()
            best_scr_s = max(scr_done, key=lambda s: scr_done[s].mean())
            best_scr = scr_done[best_scr_s].mean()
            tol = max(study["tolerance"], 2 * max(c.std() for c in [*pre_done.values(), *scr_done.values()]))
            v: dict[str, Any] = {"size": size, "arm": arm, "scratch": scratch, "seeds": len(study["seeds"]),
                                 "best_pretrained": best_pre,
                                 "best_pretrained_schedule": best_pre_s, "best_scratch": best_scr,
                                 "best_scratch_schedule": best_scr_s, "tolerance": tol,
                                 "gap": best_pre - best_scr}
            first = scheds[0]
            if pre.get(first) and scr.get(first):
                v["early_gap"] = pre[first].mean() - scr[first].mean()  # type: ignore[union-attr]
            v["floor"] = 2 * tol
            v["undecided"] = max(best_pre, best_scr) < v["floor"]  # both arms barely learned: no verdict
            catch = next((s for s in scheds if scr.get(s) and scr[s].mean() >= best_pre - tol), None)  # type: ignore[union-attr]
            v["matches"] = catch is not None
            if catch:
                v["catch_schedule"] = catch
                cs = statistics.fmean(x["images"] for x in scr[catch].samples)  # type: ignore[union-attr]
                ps = statistics.fmean(x["images"] for x in pre_done[best_pre_s].samples)
                v["scratch_images"], v["pretrained_images"] = cs, ps
            out.append(v)
    return out


def verdict_text(v: dict[str, Any]) -> str:
    head = f"**{v['size']} images, {v['scratch']} vs {v['arm']}:** "
    if v.get("undecided"):
        return (head + f"too little learning to tell: both arms stay below {v['floor']:.1f} AP (best "
                f"{v['best_scratch']:.1f} scratch, {v['best_pretrained']:.1f} pre-trained); train longer or on "
                "more data.")
    if v["matches"]:
        cost = (f"It saw {fmt(v['scratch_images'])} images, against {fmt(v['pretrained_images'])} for the "
                f"pre-trained arm's best run, pre-training included.")
        how = "does better than" if v["best_scratch"] > v["best_pretrained"] + v["tolerance"] else "matches"
        text = (head + f"training from scratch {how} pre-training (best {v['best_scratch']:.1f} vs "
                f"{v['best_pretrained']:.1f} AP, tolerance ±{v['tolerance']:.1f}) from the {v['catch_schedule']} "
                f"schedule on. {cost}")
    else:
        text = (head + f"pre-training wins by {v['gap']:.1f} AP ({v['best_pretrained']:.1f} at "
                f"{v['best_pretrained_schedule']} vs {v['best_scratch']:.1f} at {v['best_scratch_schedule']}; "
                f"tolerance ±{v['tolerance']:.1f}): with this little data or this short a schedule, scratch does "
                "not catch up (the paper's breakdown regime).")
    gap = v.get("early_gap")
    if gap is not None and gap > v["tolerance"]:
        text += f" At the shortest schedule pre-training is ahead by {gap:.1f} AP: it converges faster."
    elif gap is not None and gap < -v["tolerance"]:
        text += f" At the shortest schedule scratch is ahead by {-gap:.1f} AP."
    elif gap is not None:
        text += " At the shortest schedule the arms are level."
    if v.get("seeds", 2) < 2:
        text += " One seed: the run-to-run spread is unknown (the paper sees 0.5-2 AP on small sets); add seeds."
    return text


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
    path.write_text("\n".join(lines + [""] + body) + "\n")
    return path, all_texts


def write_report(study_dir: str | Path) -> tuple[Path, list[str]]:
    """Build ``report.md`` and its PNG plots from the run folders; returns the path and verdicts.
    A suite's folder (``suite.json``) gets every part's report and one report that joins them."""
    from fromscratch.study.plots import plot_all

    study_dir = Path(study_dir)
    if (study_dir / "suite.json").exists():
        return write_suite_report(study_dir)
    plan, results = load_results(study_dir)
    table = cells(results)
    vs = verdicts(plan, table)
    texts = [verdict_text(v) for v in vs]
    figs = plot_all(plan, results, study_dir)
    done = sum(1 for r in results if r.final)
    lines = [f"# Study report: {plan['study'].get('description') or study_dir.name}", "",
             f"{done} of {len(results)} runs complete. Detector: `{plan['detector']}`; training images: "
             f"{plan['train_size']}; seeds: {plan['study']['seeds']}.", "", "## Verdict", ""]
    lines += [f"- {t}" for t in texts] or ["- not enough finished runs for a verdict"]
    lines += [""] + tables(plan, table) + ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in figs]
    lines += ["", "## Sample accounting", "",
              "Samples seen count every image, instance and pixel each time it is seen (the paper's Fig. 2); "
              "a pre-trained arm starts with its pre-training's samples:", ""]
    for a in plan["study"]["arms"]:
        pre = next((r.pre for r in results if r.run["arm"] == a["name"]), None)
        if pre:
            est = " (estimate from the published recipe)" if pre.get("estimate") else ""
            lines.append(f"- {a['name']}: " + ", ".join(f"{fmt(pre[k])} {k}" for k in KINDS) + est)
    branched = [r for r in results if r.branched]
    if branched:
        lines += ["", "## Shared prefixes", "", "These runs started from a shorter schedule's checkpoint at its first "
                  "LR drop (same LR and batches until there, so the result is the same as training from 0):", ""]
        lines += [f"- {r.run['name']}: from {r.branched['from']} at iteration {r.branched['iteration']}"
                  for r in branched]
    path = study_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (study_dir / "verdict.json").write_text(json.dumps(vs, indent=1))
    return path, texts
