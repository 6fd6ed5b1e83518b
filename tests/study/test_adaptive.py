"""The adaptive planner: it stops where the verdict is decided and extends (or adds seeds) where not."""
import json

import pytest

from fromscratch.study.adaptive import action, run_adaptive, summary_lines
from fromscratch.study.plan import load_study, plan_runs
from tests.study.test_study import make_study


def _v(decision, catch_up="none", pre_forecast=(), seeds_needed=None, best_pre=20.0, margin=1.0, reach=None):
    f = {"pretrained": [{"schedule": m, "mean": v} for m, v in pre_forecast], "horizon": 9.0, "longest": 3.0,
         "scratch_reach": reach}  # the highest scratch's seed mean may reach at the schedules left
    if catch_up != "none":
        f["catch_up"] = catch_up
    return {"decision": decision, "forecast": f, "best_pretrained": best_pre, "margin": margin,
            "seeds_needed": seeds_needed}


@pytest.mark.parametrize("v,n_sched,n_seeds,expected", [
    (_v("within", pre_forecast=[(1, 19), (2, 20), (3, 20.5)]), 2, 1, "final"),
    (_v("within", pre_forecast=[(1, 15), (2, 20), (3, 24)]), 2, 1, "extend"),  # pre-training still gaining
    (_v("within"), 1, 1, "extend"),  # one schedule: nothing says longer ones agree
    (_v("pretrained ahead", catch_up=None), 2, 1, "final"),  # scratch not forecast to catch up
    (_v("scratch ahead", catch_up={"schedule": 1.0}), 1, 1, "final"),  # scratch beats pre-training's best
    (_v("pretrained ahead", catch_up={"schedule": 3.0}), 2, 1, "extend"),  # ... or it is: go and see
    (_v("pretrained ahead", catch_up={"schedule": 6.0}), 2, 1, "final"),  # only beyond the study's 3x
    # pre-training itself still climbing (2.6 -> 16.2, forecast 30 at 3x): a 2-point extrapolation, go on
    (_v("pretrained ahead", catch_up=None, pre_forecast=[(1, 2.6), (2, 16.2), (3, 30.0)], best_pre=16.2), 2, 1,
     "extend"),
    (_v("pretrained ahead", catch_up=None), 1, 1, "extend"),  # one schedule: no curve to read
    # pre-training still climbing, but even scratch's upper bound (10.9) is more than δ below
    # pre-training's measured best (16.2), which longer schedules only raise: out of reach, final
    (_v("pretrained ahead", catch_up=None, pre_forecast=[(1, 2.6), (2, 16.2), (3, 30.0)], best_pre=16.2,
        reach=10.9), 2, 1, "final"),
    # the same with a wide scratch interval (a 2-point forecast from the steep part): its upper bound
    # comes within δ of pre-training's best (15.5 > 16.2 - 1), go and see
    (_v("pretrained ahead", catch_up=None, pre_forecast=[(1, 2.6), (2, 16.2), (3, 30.0)], best_pre=16.2,
        reach=15.5), 2, 1, "extend"),
    (_v("undecided", seeds_needed=3), 1, 1, "seeds:3"),
    (_v("undecided", seeds_needed=9), 1, 1, "extend"),  # more seeds than max_seeds: a longer schedule
    (_v("undecided", seeds_needed=9), 3, 1, "stop"),  # nothing left
    (_v("too little learning"), 1, 1, "extend")])
def test_action(v, n_sched, n_seeds, expected):
    assert action(v, n_sched, n_total=3, n_seeds=n_seeds, max_seeds=3) == expected


def test_a_size_without_a_verdict_runs_to_the_longest_schedule_and_stops(tmp_path):
    study, base = load_study(make_study(tmp_path, schedules=["1x", "2x"], data_sizes=["all"], seeds=[0],
                                        adaptive=True, max_seeds=1))
    runs, _ = plan_runs(study, base, tmp_path / "study", 4)
    rounds = run_adaptive(study, runs, tmp_path / "study", lambda some: None, lambda names: [])["rounds"]
    assert [r["actions"] for r in rounds] == [{"all": "extend"}, {"all": "stop"}]


def test_rounds_stop_decided_sizes_and_extend_undecided_ones(tmp_path):
    """Size 'all' is decided once its 2x runs exist; size 2 stays undecided to the longest schedule."""
    study, base = load_study(make_study(tmp_path, schedules=["1x", "2x", "3x"], seeds=[0], adaptive=True, max_seeds=1))
    sd = tmp_path / "study"
    runs, _ = plan_runs(study, base, sd, 4)
    trained: list[list[str]] = []

    def execute(some):
        trained.append(sorted(r.name for r in some))
        now = json.loads((sd / "adaptive.json").read_text())  # written before the round trains
        assert sorted(now["ran"]) == trained[-1] and now["complete"] is False

    def report(names):
        done = set(names)
        out = []
        for size in ("all", "2"):
            scheds = {n.split("_")[2] for n in done if n.split("_")[1] == size}
            decided = size == "all" and "2x" in scheds
            out.append({**_v("within" if decided else "undecided", pre_forecast=[(1, 19), (2, 20)]), "size": size})
        return out

    summary = run_adaptive(study, runs, sd, execute, report)
    assert [len(t) for t in trained] == [4, 8, 10]  # 2 arms x 2 sizes at 1x; + 2x; + 3x for size 2 only
    assert "scratch_all_3x_s0" not in trained[-1] and "scratch_2_3x_s0" in trained[-1]
    assert [r["actions"] for r in summary["rounds"]] == [{"all": "extend", "2": "extend"},
                                                         {"all": "final", "2": "extend"},
                                                         {"all": "final", "2": "stop"}]
    assert summary["skipped"] == ["pretrained_all_3x_s0", "scratch_all_3x_s0"]
    full = sum(r.total_iters - r.branch_iter for r in runs)
    assert summary["iterations_full_grid"] == full and summary["iterations_adaptive"] < full
    saved = json.loads((sd / "adaptive.json").read_text())
    assert saved["fraction"] == pytest.approx(summary["iterations_adaptive"] / full) and saved["complete"] is True
    assert "2 of the full grid skipped" in "\n".join(summary_lines(sd))


@pytest.mark.slow
def test_adaptive_study_end_to_end(tmp_path):
    """A real (tiny) adaptive study through the runner: rounds, verdicts rebuilt between them, the
    report's "Adaptive study" section; re-running it trains nothing more."""
    from fromscratch.study.report import write_report
    from fromscratch.study.runner import run_study

    path = make_study(tmp_path, schedules=["1x", "2x"], data_sizes=["all"], adaptive=True, max_seeds=1)
    sd = run_study(path)
    a = json.loads((sd / "adaptive.json").read_text())
    assert a["rounds"] and set(a["ran"]) <= {r["name"] for r in json.loads((sd / "plan.json").read_text())["runs"]}
    assert "## Adaptive study" in write_report(sd)[0].read_text()  # what `fromscratch study` does at the end
    before = {p: p.stat().st_mtime for p in (sd / "runs").rglob("model_*.pth")}
    run_study(path)
    assert {p: p.stat().st_mtime for p in (sd / "runs").rglob("model_*.pth")} == before
