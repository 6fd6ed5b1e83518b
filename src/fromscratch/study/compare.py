"""`fromscratch compare --a RUN... --b RUN...`: two sets of runs (one per seed each) compared as the verdict
compares arms: every metric's gap (A − B) with a 90% interval from a paired bootstrap over the shared
validation images plus the seed spread (study/stats.py), and the equivalence decision with margin δ.

For questions outside a study's arms: fp32 vs bf16, two configs, two machines. The runs must have been
evaluated on the same validation images (data.val, eval.max_images); each run's last evaluation is
used, with its kept detections (``eval/detections_XXXXXXX.json``) for the per-image bootstrap.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fromscratch.config import load_config
from fromscratch.errors import FromScratchError
from fromscratch.study.accounting import read_metrics
from fromscratch.study.stats import arm_variance, compare, decide, what_would_decide
from fromscratch.study.verdict import IOU_TYPES, LEVEL


def _final(folder: Path) -> dict[str, Any]:
    if not (folder / "config.yaml").exists():
        raise FromScratchError(f"{folder}: not a run folder (no config.yaml)")
    _, evals = read_metrics(folder)
    if not evals:
        raise FromScratchError(f"{folder}: no evaluation in metrics.jsonl (train with data.val set)")
    return evals[-1]


def compare_runs(a: list[Path], b: list[Path], margin: float = 1.0, seed_std: float = 1.0,
                 names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Gaps A − B per metric with intervals and decisions; see the module's docstring."""
    from fromscratch.data.build import build_dataset
    from fromscratch.evaluation.bootstrap import match_per_image
    from fromscratch.study.verdict import validation_gt

    folders = [Path(x) for x in a + b]
    finals = [_final(f) for f in folders]
    cfgs = [load_config(f / "config.yaml") for f in folders]
    evalset = {(c.data.val, c.eval.max_images) for c in cfgs}
    if len(evalset) > 1:
        raise FromScratchError("the runs were evaluated on different validation sets (data.val, eval.max_images): "
                               + "; ".join(f"{f}: {c.data.val} x {c.eval.max_images}" for f, c in zip(folders, cfgs)))
    val = build_dataset(cfgs[0].data, "val", check_images=False) if cfgs[0].data.val else None
    gt = validation_gt(cfgs[0], val)

    def matches(i: int, t: str) -> Any:
        path = folders[i] / "eval" / f"detections_{finals[i]['iteration']:07d}.json"
        return match_per_image(gt, json.loads(path.read_text()), t) if gt is not None and path.exists() else None

    na = len(a)
    sides = (range(na), range(na, len(folders)))

    def finals_of(t: str, k: str, idx: range) -> list[float]:
        return [finals[i][t][k] for i in idx]

    gaps: dict[str, Any] = {}
    for t in IOU_TYPES:
        if not all(t in f for f in finals):
            continue
        vals = [{k: finals_of(t, k, idx) for k in ("AP", "AP50", "AP75")} for idx in sides]
        ms = [[matches(i, t) for i in idx] for idx in sides]
        ms = [None if any(m is None for m in side) else side for side in ms]
        gaps.update(compare(vals[0], vals[1], ms[0], ms[1], t, seed_std, LEVEL))
    rows = []
    words = {"within": f"within ±{margin:g}", "pretrained ahead": f"{names[0]} ahead",
             "scratch ahead": f"{names[1]} ahead", "undecided": "undecided"}
    for key, g in gaps.items():
        t, k = key.split(".")
        d = decide(g, margin)
        means = [statistics.fmean(finals_of(t, k, idx)) for idx in sides]
        rows.append({"metric": key, "a": means[0], "b": means[1], "gap": g.gap, "lo": g.lo, "hi": g.hi,
                     "decision": words[d], "images_resampled": g.images_resampled, "seeds_measured": g.seeds_measured,
                     "what_would_decide": what_would_decide(g, margin, statistics.fmean(
                         [arm_variance(finals_of(t, k, idx), seed_std) for idx in sides])).text
                     if d == "undecided" else ""})
    return {"names": list(names), "a": [str(x) for x in a], "b": [str(x) for x in b], "margin": margin,
            "level": LEVEL, "iterations": [f["iteration"] for f in finals], "rows": rows}


def _its(its: list[int]) -> str:
    return ", ".join(str(x) for x in sorted(set(its)))


def compare_text(c: dict[str, Any]) -> str:
    a, b = c["names"]
    lines = [f"{a}: {len(c['a'])} run(s); {b}: {len(c['b'])} run(s); gap = {a} − {b}, "
             f"{c['level']:.0%} interval, margin δ = {c['margin']:g} AP; last evaluation at iteration "
             f"{_its(c['iterations'][:len(c['a'])])} ({a}), {_its(c['iterations'][len(c['a']):])} ({b})", "",
             f"| metric | {a} | {b} | gap | interval | decision |", "|---|---|---|---|---|---|"]
    for r in c["rows"]:
        lines.append(f"| {r['metric']} | {r['a']:.1f} | {r['b']:.1f} | {r['gap']:+.2f} | "
                     f"[{r['lo']:+.2f}, {r['hi']:+.2f}] | {r['decision']} |")
    notes = [r for r in c["rows"] if r["what_would_decide"]]
    if any(not r["images_resampled"] for r in c["rows"]):
        lines.append("\nno kept detections for some runs: intervals from the seed spread only")
    if any(not r["seeds_measured"] for r in c["rows"]):
        lines.append("\none run on a side: its seed spread is the assumed --seed-std, not measured")
    if notes:
        lines.append(f"\n{notes[0]['metric']}: {notes[0]['what_would_decide']}")
    return "\n".join(lines)
