"""The verdict per data size: is scratch within ±δ of pre-training, is one arm ahead, or is it undecided;
from which schedule scratch catches up (measured, then forecast); every metric's gap with its interval.

Inputs are the run folders only: each run's final metrics and, when kept, its final detections
(``eval/detections_XXXXXXX.json``), scored again per image for the paired bootstrap (study/stats.py).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.evaluation.bootstrap import PerImageMatches, match_per_image
from fromscratch.study import forecast as fc
from fromscratch.study.accounting import fmt
from fromscratch.study.stats import Gap, arm_variance, compare, decide, what_would_decide

IOU_TYPES = ("bbox", "segm", "keypoints")
LEVEL = 0.90


def settings(study: dict) -> tuple[float, float]:
    """(margin δ, prior seed sd) of a study; older plans had ``tolerance`` for the margin."""
    return float(study.get("margin", study.get("tolerance", 1.0))), float(study.get("seed_std", 1.0))


def validation_gt(cfg: Any, val: Any) -> dict | None:
    """The COCO ground truth the runs were evaluated on (data.val, first eval.max_images), or None."""
    from fromscratch.data.coco import dataset_to_coco
    from fromscratch.evaluation.predict import iou_types_for

    if cfg is None or val is None:
        return None
    if iou_types_for(val, cfg.model.meta_arch) == ["voc"]:
        return None  # VOC mAP: no per-image COCO matching
    return dataset_to_coco(val.head(cfg.eval.max_images))


class Evidence:
    """Per-image matches of the runs' final detections, computed once per run and IoU type."""

    def __init__(self, study_dir: Path, gt: dict | None) -> None:
        self.study_dir, self.gt = study_dir, gt
        self.cache: dict[tuple[str, str], PerImageMatches | None] = {}

    def matches(self, run: dict, iou_type: str) -> PerImageMatches | None:
        key = (run["name"], iou_type)
        if key not in self.cache:
            it = run.get("final_iteration", run["total_iters"])
            path = self.study_dir / "runs" / run["name"] / "eval" / f"detections_{it:07d}.json"
            ok = self.gt is not None and path.exists()
            self.cache[key] = match_per_image(self.gt, json.loads(path.read_text()), iou_type) if ok else None
        return self.cache[key]

    def for_cell(self, runs: list[dict], iou_type: str) -> list[PerImageMatches] | None:
        found = [self.matches(r, iou_type) for r in runs]
        return None if not found or any(m is None for m in found) else found  # type: ignore[return-value]


def _values(cell: Any, t: str) -> dict[str, list[float]]:
    return {k: cell.values.get(f"{t}.{k}", []) for k in ("AP", "AP50", "AP75")}


def gaps(pre: Any, scr: Any, ev: Evidence, margin: float, prior_sd: float, types: tuple[str, ...]) -> dict[str, Gap]:
    out: dict[str, Gap] = {}
    for t in types:
        if f"{t}.AP" in pre.values and f"{t}.AP" in scr.values:
            out.update(compare(_values(pre, t), _values(scr, t), ev.for_cell(pre.runs, t), ev.for_cell(scr.runs, t),
                               t, prior_sd, LEVEL))
    return out


def _points(cells: dict, arm: str, size: str, scheds: list[str]) -> dict[float, list[float]]:
    return {parse_multiplier(s): cells[(arm, size, s)].values["bbox.AP"] for s in scheds
            if (arm, size, s) in cells and "bbox.AP" in cells[(arm, size, s)].values}


def _forecasts(cells: dict, arm: str, size: str, scheds: list[str], prior_sd: float) -> list[fc.Forecast]:
    points = _points(cells, arm, size, scheds)
    longest = max((parse_multiplier(s) for s in scheds), default=1.0)
    grid = sorted({parse_multiplier(s) for s in scheds} | {2 * longest, 3 * longest})
    return fc.forecast_arm(points, grid, prior_sd, LEVEL)


def verdict_for(plan: dict, cells: dict, ev: Evidence, size: str, arm: str, scratch: str) -> dict[str, Any] | None:
    study = plan["study"]
    margin, prior_sd = settings(study)
    scheds = sorted(study["schedules"], key=parse_multiplier)
    pre = {s: cells[(arm, size, s)] for s in scheds if (arm, size, s) in cells}
    scr = {s: cells[(scratch, size, s)] for s in scheds if (scratch, size, s) in cells}
    if not pre or not scr:
        return None
    if not all("bbox.AP" in c.values for c in [*pre.values(), *scr.values()]):
        return None  # VOC mAP: no COCO AP to compare (the tables still show every number)
    bp = max(pre, key=lambda s: pre[s].mean())
    bs = max(scr, key=lambda s: scr[s].mean())
    best = gaps(pre[bp], scr[bs], ev, margin, prior_sd, IOU_TYPES)
    by_schedule = {s: gaps(pre[bp], scr[s], ev, margin, prior_sd, ("bbox",))["bbox.AP"] for s in scr}
    same = {s: gaps(pre[s], scr[s], ev, margin, prior_sd, ("bbox",))["bbox.AP"]
            for s in scheds if s in pre and s in scr}
    g = best["bbox.AP"]
    v: dict[str, Any] = {"size": size, "arm": arm, "scratch": scratch, "margin": margin,
                         "seed_std": prior_sd, "level": LEVEL, "best_pretrained": pre[bp].mean(),
                         "best_pretrained_schedule": bp,
                         "best_scratch": scr[bs].mean(), "best_scratch_schedule": bs,
                         "gaps": {k: x.to_dict() for k, x in best.items()},
                         "vs_best_pretrained": {s: x.to_dict() for s, x in by_schedule.items()},
                         "same_schedule": {s: x.to_dict() for s, x in same.items()},
                         "decision": decide(g, margin)}
    if max(v["best_pretrained"], v["best_scratch"]) < 2 * margin:
        v["decision"] = "too little learning"
    catch = next((s for s in scheds if s in by_schedule and decide(by_schedule[s], margin) in
                  ("within", "scratch ahead")), None)
    if catch:
        v["catch_schedule"] = catch
        v["scratch_images"] = statistics.fmean(x["images"] for x in scr[catch].samples)
        v["pretrained_images"] = statistics.fmean(x["images"] for x in pre[bp].samples)
    if v["decision"] == "undecided":
        var = statistics.fmean([arm_variance(pre[bp].values["bbox.AP"], prior_sd),
                                arm_variance(scr[bs].values["bbox.AP"], prior_sd)])
        remedy = what_would_decide(g, margin, var)
        v["to_decide"], v["seeds_needed"] = remedy.text, remedy.seeds
    v["forecast"] = _forecast_summary(cells, arm, scratch, size, scheds, prior_sd, margin)
    return v


def _forecast_summary(cells: dict, arm: str, scratch: str, size: str, scheds: list[str], prior_sd: float,
                      margin: float) -> dict[str, Any]:
    pre_f = _forecasts(cells, arm, size, scheds, prior_sd)
    scr_f = _forecasts(cells, scratch, size, scheds, prior_sd)
    out: dict[str, Any] = {"pretrained": [f.to_dict() for f in pre_f], "scratch": [f.to_dict() for f in scr_f]}
    if not scr_f:
        out["note"] = "needs two finished schedules of each arm"
        return out
    measured_pre = [cells[(arm, size, s)].mean() for s in scheds if (arm, size, s) in cells]
    reference = max(measured_pre + [f.mean for f in pre_f])
    hit = fc.catch_up(scr_f, reference, margin)
    out["reference"] = reference
    out["horizon"] = max(f.schedule for f in scr_f)
    out["longest"] = max(parse_multiplier(s) for s in scheds)
    out["catch_up"] = hit.to_dict() if hit else None
    # how high scratch's seed mean may get within the study (adaptive.out_of_reach): the largest upper
    # bound, seed noise included, over the study's schedules not yet measured
    pts = _points(cells, scratch, size, scheds)
    out["scratch_reach"] = fc.upper_reach(pts, [parse_multiplier(s) for s in scheds], prior_sd,
                                          max((len(v) for v in pts.values()), default=1), LEVEL)
    return out


def verdicts(plan: dict, cells: dict, study_dir: Path, cfg: Any = None, val: Any = None) -> list[dict[str, Any]]:
    """Per data size and pre-trained arm (against the arm with no weights); ``cfg``/``val``: the study's
    run config and validation set (plan.study_validation), for the per-image bootstrap."""
    arms = plan["study"]["arms"]
    ev = Evidence(study_dir, validation_gt(cfg, val))
    out = []
    for size in [str(s) for s in plan["study"]["data_sizes"]]:
        for a in [a for a in arms if a.get("weights")]:
            scratch = scratch_arm(arms, a)
            v = verdict_for(plan, cells, ev, size, a["name"], scratch) if scratch else None
            if v is not None:
                v["augmentation"] = a.get("augmentation")
                out.append(v)
    return out


def scratch_arm(arms: list[dict], arm: dict) -> str | None:
    """The arm a pre-trained arm is compared with: the first arm without weights under the same
    augmentation (the study's augmentations: axis compares within each strength)."""
    return next((a["name"] for a in arms if not a.get("weights")
                 and a.get("augmentation") == arm.get("augmentation")), None)


def _iv(g: dict) -> str:
    return f"{g['gap']:+.1f} ({g['level']:.0%} interval {g['lo']:+.1f} to {g['hi']:+.1f})"


def verdict_text(v: dict[str, Any]) -> str:
    head = f"**{v['size']} images, {v['scratch']} vs {v['arm']}:** "
    g, d = v["gaps"]["bbox.AP"], v["margin"]
    best = (f"best {v['best_pretrained']:.1f} AP at {v['best_pretrained_schedule']} (pre-trained) vs "
            f"{v['best_scratch']:.1f} at {v['best_scratch_schedule']} (scratch)")
    if v["decision"] == "too little learning":
        text = (head + f"too little learning to tell: both arms stay below {2 * d:.1f} AP ({best}); train longer or "
                "on more data.")
    elif v["decision"] == "within":
        text = head + f"scratch is within ±{d:g} AP of pre-training: gap {_iv(g)}; {best}."
        if v.get("catch_schedule"):
            text += (f" It gets there from the {v['catch_schedule']} schedule on, having seen "
                     f"{fmt(v['scratch_images'])} images against {fmt(v['pretrained_images'])} for the "
                     "pre-trained arm's best run, pre-training included.")
    elif v["decision"] == "pretrained ahead":
        text = head + f"pre-training is ahead by more than {d:g} AP: gap {_iv(g)}; {best}."
    elif v["decision"] == "scratch ahead":
        text = head + f"scratch is ahead by more than {d:g} AP: gap {_iv(g)}; {best}."
    else:
        text = head + f"undecided at margin ±{d:g} AP: gap {_iv(g)}; {best}. {v['to_decide'][0].upper()}" \
                      f"{v['to_decide'][1:]}."
    if not g["images_resampled"]:
        text += " No per-image detections were kept, so the interval leaves out the validation images' noise."
    if not g["seeds_measured"]:
        text += (f" One seed: training noise is not measured; the interval assumes a seed spread of "
                 f"{v['seed_std']:g} AP (study key seed_std).")
    return text + _forecast_text(v) + _metrics_text(v)


def _forecast_text(v: dict[str, Any]) -> str:
    f = v["forecast"]
    if "catch_up" not in f:
        return ""
    hit = f["catch_up"]
    if hit is None:
        return (f" Forecast: scratch does not come within {v['margin']:g} AP of pre-training's best "
                f"({f['reference']:.1f}, measured or forecast) by {f['horizon']:g}x.")
    where = ("measured" if hit["measured"] is not None
             else f"forecast {hit['mean']:.1f} [{hit['lo']:.1f}, {hit['hi']:.1f}]")
    return (f" Forecast catch-up schedule: {hit['schedule']:g}x (scratch {where}, within {v['margin']:g} AP of "
            f"pre-training's best, {f['reference']:.1f} measured or forecast up to {f['horizon']:g}x).")


def _metrics_text(v: dict[str, Any]) -> str:
    parts = [f"{k.replace('bbox.', 'box ').replace('segm.', 'mask ').replace('keypoints.', 'keypoint ')} {_iv(g)}"
             for k, g in v["gaps"].items() if k != "bbox.AP"]
    return (" Best-vs-best gaps by metric: " + "; ".join(parts) + ".") if parts else ""




def gap_tables(vs: list[dict[str, Any]]) -> list[str]:
    """Markdown: for each verdict, the gaps with intervals by schedule and, best vs best, by metric."""
    if not vs:
        return []
    lines = ["## Gaps with intervals (pre-trained − scratch, AP points)", "",
             f"{vs[0]['level']:.0%} intervals: paired bootstrap over the validation images plus the seed spread "
             "(measured with 2+ seeds, else the study's seed_std). Decision at margin ±δ: within (interval inside "
             "±δ), ahead (beyond δ), else undecided.", "",
             "| data | arms | comparison | metric | gap | interval | decision |", "|---|---|---|---|---|---|---|"]
    for v in vs:
        arms = f"{v['arm']} − {v['scratch']}"
        rows = [(f"best ({v['best_pretrained_schedule']} vs {v['best_scratch_schedule']})", g)
                for g in v["gaps"].values()]
        rows += [(f"{v['best_pretrained_schedule']} vs scratch {s}", g) for s, g in v["vs_best_pretrained"].items()]
        rows += [(f"both at {s}", g) for s, g in v["same_schedule"].items()]
        for label, g in rows:
            lines.append(f"| {v['size']} | {arms} | {label} | {g['metric']} | {g['gap']:+.1f} | "
                         f"[{g['lo']:+.1f}, {g['hi']:+.1f}] | {decide(_gap(g), v['margin'])} |")
    return lines


def augmentation_table(vs: list[dict[str, Any]]) -> list[str]:
    """Markdown, for a study with an augmentations: axis: per data size, each strength's best pre-trained
    and best scratch box AP and their gap, side by side (does stronger augmentation close the gap?)."""
    rows = [v for v in vs if v.get("augmentation")]
    if not rows:
        return []
    lines = ["## Augmentation strength (the same arms under each data.augmentation)", "",
             "| data | augmentation | arms | best pre-trained | best scratch | gap (best vs best) | decision |",
             "|---|---|---|---|---|---|---|"]
    for v in rows:
        g = v["gaps"]["bbox.AP"]
        lines.append(f"| {v['size']} | {v['augmentation']} | {v['arm']} − {v['scratch']} | "
                     f"{v['best_pretrained']:.1f} ({v['best_pretrained_schedule']}) | {v['best_scratch']:.1f} "
                     f"({v['best_scratch_schedule']}) | {_iv(g)} | {v['decision']} |")
    return lines + [""]


def _gap(d: dict[str, Any]) -> Gap:
    return Gap(**{**d, "n_seeds": tuple(d["n_seeds"])})
