"""Report tables built from run folders: training loss beside val AP (the paper's Fig. 8)."""
from fromscratch.study.report import load_results, loss_table, round_verdicts, write_report
from tests.study.test_study import _synthetic_study


def test_loss_table_takes_each_arms_longest_schedule_with_its_final_loss(tmp_path):
    sd = tmp_path / "study"
    _synthetic_study(sd, seed_std=1.0)
    plan, results = load_results(sd)
    lines = loss_table(plan, results)
    # 2x is the longest schedule: its 2 train lines have losses 1.0 and 0.5; the last 10% holds only 0.5
    assert "| all | scratch | 2x | 1 | 0.500 | 31.0 |" in lines
    assert "| 10 | pretrained | 2x | 1 | 0.500 | 1.5 |" in lines
    assert sum(1 for x in lines if x.startswith("| ") and "2x" in x) == 6  # 3 sizes x 2 arms
    assert "## Training loss and val AP" in write_report(sd)[0].read_text()


def test_an_adaptive_studys_report_leaves_out_finished_runs_its_rounds_did_not_ask_for(tmp_path):
    """A 2x scratch run left in the folder (from a full-grid or earlier attempt) while the adaptive rounds
    ran only 1x must not enter the verdict: with it scratch's best would be compared with pre-training's
    1x best, schedules apart."""
    import json

    sd = tmp_path / "study"
    _synthetic_study(sd, seed_std=1.0)
    plan = json.loads((sd / "plan.json").read_text())
    plan["study"]["adaptive"] = True
    (sd / "plan.json").write_text(json.dumps(plan))
    ran = [r["name"] for r in plan["runs"] if r["schedule"] == "1x"]
    skipped = [r["name"] for r in plan["runs"] if r["name"] not in ran]
    (sd / "adaptive.json").write_text(json.dumps({"ran": ran, "skipped": skipped, "rounds": [], "fraction": 1 / 3,
                                                   "iterations_adaptive": 1200, "iterations_full_grid": 3600}))
    assert {r.run["name"] for r in load_results(sd)[1]} == set(ran)
    write_report(sd)
    v = {x["size"]: x for x in json.loads((sd / "verdict.json").read_text())}
    assert v["all"]["best_scratch"] == 20  # 1x's best; the 2x run (31.0) is left out
    names = ["scratch_all_1x_s0", "pretrained_all_1x_s0", "scratch_all_2x_s0"]  # an explicit list wins
    assert {r.run["name"] for r in load_results(sd, names)[1]} == set(names)
    # what an adaptive round decides on (runner.run_study): its own runs, not the older adaptive.json's list
    v = {x["size"]: x for x in round_verdicts(sd, names)}
    assert set(v) == {"all"} and v["all"]["best_scratch"] == 31.0  # the 2x run it asked for
    assert "## Adaptive study" in write_report(sd)[0].read_text()
    plan["study"]["adaptive"] = False  # the same folder declared a full grid: every run, no stale rounds
    (sd / "plan.json").write_text(json.dumps(plan))
    assert len(load_results(sd)[1]) == len(plan["runs"])
    assert "## Adaptive study" not in write_report(sd)[0].read_text()
