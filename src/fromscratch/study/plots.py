"""The study's figures (matplotlib, Agg): the paper's Fig. 1/3 (AP vs iterations), Fig. 2 (AP vs
samples seen, pre-training included) and Fig. 8 (training loss next to val AP per data size)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fromscratch.engine.schedule import parse_multiplier
from fromscratch.study.accounting import KINDS, total_samples

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


def plot_all(plan: dict, results: list, out: Path) -> list[str]:
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
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ap_vs_iterations.png", dpi=90)
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
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ap_vs_samples.png", dpi=90)
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
        ax.legend(fontsize=7, loc="upper center")
        ax2.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(out / "loss_and_ap.png", dpi=90)
    plt.close(fig)
    names.append("loss_and_ap.png")
    return names
