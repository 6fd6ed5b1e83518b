"""The study's figures (matplotlib, Agg): the paper's Fig. 1/3 (AP vs iterations), Fig. 2 (AP vs
samples seen, pre-training included) and Fig. 8 (training loss next to val AP per data size)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.study.accounting import KINDS, total_samples
from fromscratch.utils import save_figure

STYLES = ["-", "--", ":", "-."]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _key(res: Any) -> tuple:
    return res.run["arm"], str(res.run["size"]), res.run["schedule"]


def _seed0(results: list) -> list:
    """One curve per (arm, size, schedule): the lowest seed (curves are illustrations; tables average)."""
    best: dict[tuple, Any] = {}
    for r in results:
        if r.evals and (_key(r) not in best or r.run["seed"] < best[_key(r)].run["seed"]):
            best[_key(r)] = r
    return list(best.values())


def _colors(arms: list[str]) -> dict[str, str]:
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    return {a: palette[i % len(palette)] for i, a in enumerate(arms)}


def _legend(ax: Any, **kw: Any) -> None:
    """A legend where the axes have labelled lines: a partial study (an adaptive round, a run still going)
    can leave a panel empty, and matplotlib warns on an empty legend."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kw)


def plot_all(plan: dict, results: list, out: Path, val: Any = None) -> list[str]:
    """The report's figures; ``val`` (the validation Dataset, None if unreadable) for the predictions figure."""
    plt = _plt()
    study = plan["study"]
    sizes = [str(s) for s in study["data_sizes"]]
    arms = [a["name"] for a in study["arms"]]
    scheds = sorted(study["schedules"], key=parse_multiplier)
    colors = _colors(arms)
    curves = _seed0(results)
    names = []

    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for r in (c for c in curves if str(c.run["size"]) == size):
            ls = STYLES[scheds.index(r.run["schedule"]) % len(STYLES)]
            ax.plot([e["iteration"] for e in r.evals], [e["bbox"]["AP"] for e in r.evals], ls,
                    color=colors[r.run["arm"]], marker="o", ms=3, label=f"{r.run['arm']} {r.run['schedule']}")
        ax.set(title=f"data: {size}", xlabel="iterations", ylabel="bbox AP")
        _legend(ax)
    fig.tight_layout()
    save_figure(fig, out / "ap_vs_iterations.png")
    plt.close(fig)
    names.append("ap_vs_iterations.png")

    longest = [c for c in curves if c.run["schedule"] == scheds[-1]]
    fig, axes = plt.subplots(len(sizes), 3, figsize=(14, 3.6 * len(sizes)), squeeze=False)
    for row, size in zip(axes, sizes):
        for ax, kind in zip(row, KINDS):
            for r in (c for c in longest if str(c.run["size"]) == size):
                xs = [total_samples(e["samples_seen"], r.pre)[kind] for e in r.evals]
                ax.plot(xs, [e["bbox"]["AP"] for e in r.evals], color=colors[r.run["arm"]], marker="o", ms=3,
                        label=r.run["arm"] + (" (incl. pre-training)" if r.pre.get(kind) else ""))
            ax.set(xscale="log", xlabel=f"{kind} seen", ylabel="bbox AP", title=f"data: {size}")
            _legend(ax)
    fig.tight_layout()
    save_figure(fig, out / "ap_vs_samples.png")
    plt.close(fig)
    names.append("ap_vs_samples.png")

    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ax2 = ax.twinx()
        for r in (c for c in longest if str(c.run["size"]) == size):
            col = colors[r.run["arm"]]
            ax.plot([t["iteration"] for t in r.train], [t["loss"] for t in r.train], color=col, alpha=0.6,
                    label=f"{r.run['arm']} train loss")
            ax2.plot([e["iteration"] for e in r.evals], [e["bbox"]["AP"] for e in r.evals], "--", color=col,
                     marker="o", ms=3, label=f"{r.run['arm']} val AP")
        ax.set(title=f"data: {size} ({scheds[-1]})", xlabel="iterations", ylabel="training loss")
        ax2.set_ylabel("val bbox AP")
        _legend(ax, loc="upper center")
        _legend(ax2, loc="center right")
    fig.tight_layout()
    save_figure(fig, out / "loss_and_ap.png")
    plt.close(fig)
    names.append("loss_and_ap.png")
    fig_name = prediction_figure(plan, results, out, val) if val is not None else None
    if fig_name:
        names.append(fig_name)
    return names


def _detections(folder: Path, iteration: int) -> list[dict]:
    import json

    path = folder / "eval" / f"detections_{iteration:07d}.json"
    return json.loads(path.read_text()) if path.exists() else []


def prediction_figure(plan: dict, results: list, out: Path, val: Any, n_images: int = 3,
                      score: float = 0.3) -> str | None:
    """The same val images predicted by each arm at its first and its final evaluation (largest data size):
    what "pre-training converges faster" looks like. Drawn from the runs' saved detections."""
    import numpy as np

    from fromscratch.data.loader import load_image
    from fromscratch.visualize import draw, grid, save_png

    study = plan["study"]
    c2l = {c: lab for lab, c in val.label_to_cat_id.items()}
    size = str(study["data_sizes"][0])
    scheds = sorted(study["schedules"], key=parse_multiplier)
    records = val.records[:n_images]
    tiles, titles = [], []
    for arm in [a["name"] for a in study["arms"]]:
        runs = {r.run["schedule"]: r for r in results if r.run["arm"] == arm and str(r.run["size"]) == size
                and r.run["seed"] == min(study["seeds"]) and r.evals}
        if scheds[0] not in runs or scheds[-1] not in runs:
            continue
        first, last = runs[scheds[0]], runs[scheds[-1]]
        for label, run, it in (("early", first, first.evals[0]["iteration"]),
                               ("final", last, last.evals[-1]["iteration"])):
            dets = _detections(out / "runs" / run.run["name"], it)
            for rec in records:
                mine = [d for d in dets if d["image_id"] == rec.image_id and d["score"] >= score]
                boxes = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                                  for d in mine]).reshape(-1, 4)
                tiles.append(draw(load_image(rec.file_name), boxes, [c2l.get(d["category_id"], 0) for d in mine],
                                  val.class_names, [d["score"] for d in mine]))
                titles.append(f"{arm} {label} (it {it})")
    if not tiles:
        return None
    save_png(grid(tiles, cols=len(records), tile=224, titles=titles), out / "predictions.png")
    return "predictions.png"


def forecast_figure(vs: list[dict], cells: dict, out: Path) -> bool:
    """Final box AP against schedule length per data size: measured seed means (points), forecasts
    (dashed, with their intervals shaded), and the pre-trained arm's best minus the margin."""
    drawn = [v for v in vs if v["forecast"].get("scratch")]
    if not drawn:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(drawn), figsize=(5 * len(drawn), 3.8), squeeze=False)
    for ax, v in zip(axes[0], drawn):
        for arm, key, color in ((v["arm"], "pretrained", "tab:blue"), (v["scratch"], "scratch", "tab:red")):
            f = v["forecast"][key]
            if not f:
                continue
            xs = [x["schedule"] for x in f]
            ax.plot(xs, [x["mean"] for x in f], "--", color=color, label=f"{arm} forecast")
            ax.fill_between(xs, [x["lo"] for x in f], [x["hi"] for x in f], color=color, alpha=0.15)
            pts = [(k[2], c) for k, c in cells.items() if k[0] == arm and k[1] == v["size"]]
            ax.plot([parse_multiplier(s) for s, _ in pts], [c.mean() for _, c in pts], "o", color=color,
                    label=f"{arm} measured")
        ref = v["forecast"].get("reference")
        if ref is not None:
            ax.axhline(ref - v["margin"], color="gray", lw=0.8, ls=":", label="pre-trained best − δ")
        ax.set(title=f"data: {v['size']}", xlabel="schedule (x)", ylabel="final bbox AP", xscale="log")
        _legend(ax)
    fig.tight_layout()
    save_figure(fig, out / "forecast.png")
    plt.close(fig)
    return True
