"""A study's ``grid:`` (the paper's small-data protocol): trials planned, the best combination chosen on
the tuned arm and applied to every arm at that size, refused when it names what the study lacks."""
import json
from pathlib import Path

import pytest

from fromscratch.errors import ConfigError
from fromscratch.study.grid import choose, combinations, load_choices, plan_trials
from fromscratch.study.plan import load_study, plan_runs
from fromscratch.study.report import write_report
from fromscratch.study.runner import run_study
from tests.study.test_study import make_study


def _eval_line(folder: Path, iteration: int, ap: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "eval", "iteration": iteration, "bbox": {"AP": ap, "AP50": ap, "AP75": ap}}) + "\n")


def test_trials_are_planned_chosen_on_the_tuned_arm_and_applied_to_both(tmp_path):
    grid = {"sizes": [2], "base_lr": [0.01, 0.04], "decay_factor": [0.1, 0.02]}
    study, base = load_study(make_study(tmp_path, grid=grid))
    sd = tmp_path / "study"
    assert [list(c.values()) for c in combinations(study)] == [[0.01, 0.1], [0.01, 0.02], [0.04, 0.1], [0.04, 0.02]]
    trials, configs = plan_trials(study, base, sd, train_size=4)
    # searched on the pre-trained arm only, at the shortest schedule (1x: 12 iterations on 2 images), seed 0
    assert [t.name for t in trials] == [f"grid_2_pretrained_{k}" for k in range(4)]
    assert {t.schedule for t in trials} == {"1x"} and {t.total_iters for t in trials} == {12}
    chosen = configs["grid_2_pretrained_2"].train
    assert chosen.base_lr == 0.04 and chosen.decay_factor == 0.1
    assert configs["grid_2_pretrained_1"].data.subset.endswith("train_2_seed0.json")
    for t, ap in zip(trials, [3.0, 5.0, 9.0, 1.0]):
        _eval_line(t.folder(sd), 6, 50.0)  # an earlier evaluation does not count: the final one does
        _eval_line(t.folder(sd), 12, ap)
    out = choose(study, trials, sd)
    assert out["choices"] == {"2": {"*": {"train.base_lr": 0.04, "train.decay_factor": 0.1}}}
    runs, cfgs = plan_runs(study, base, sd, 4, load_choices(sd))
    for arm in ("scratch", "pretrained"):  # both arms take the pre-trained arm's choice at 2 images ...
        assert cfgs[f"{arm}_2_2x_s0"].train.base_lr == 0.04
        assert cfgs[f"{arm}_all_1x_s0"].train.base_lr == 0.02  # ... and not at the other size
    plain, plain_cfgs = plan_runs(study, base, sd, 4)
    assert plain_cfgs["scratch_2_1x_s0"].train.base_lr == 0.02


def test_scratch_sizes_get_their_own_search(tmp_path):
    grid = {"sizes": [2, "all"], "scratch_sizes": [2], "base_lr": [0.01, 0.04]}
    study, base = load_study(make_study(tmp_path, grid=grid))
    sd = tmp_path / "study"
    trials, _ = plan_trials(study, base, sd, 4)
    assert sorted(t.name for t in trials) == sorted(
        ["grid_2_pretrained_0", "grid_2_pretrained_1", "grid_2_scratch_0", "grid_2_scratch_1",
         "grid_all_pretrained_0", "grid_all_pretrained_1"])
    aps = {"grid_2_pretrained_0": 5, "grid_2_pretrained_1": 2, "grid_2_scratch_0": 1, "grid_2_scratch_1": 4,
           "grid_all_pretrained_0": 1, "grid_all_pretrained_1": 7}
    for t in trials:
        _eval_line(t.folder(sd), t.total_iters, aps[t.name])
    choices = choose(study, trials, sd)["choices"]
    assert choices == {"2": {"*": {"train.base_lr": 0.01}, "scratch": {"train.base_lr": 0.04}},
                       "all": {"*": {"train.base_lr": 0.04}}}
    _, cfgs = plan_runs(study, base, sd, 4, choices)
    assert cfgs["pretrained_2_1x_s0"].train.base_lr == 0.01 and cfgs["scratch_2_1x_s0"].train.base_lr == 0.04
    assert cfgs["scratch_all_1x_s0"].train.base_lr == 0.04


def test_an_unfinished_trial_is_not_chosen_silently(tmp_path):
    study, base = load_study(make_study(tmp_path, grid={"sizes": [2], "base_lr": [0.01, 0.04]}))
    trials, _ = plan_trials(study, base, tmp_path / "study", 4)
    _eval_line(trials[0].folder(tmp_path / "study"), 12, 3.0)
    with pytest.raises(RuntimeError, match="grid_2_pretrained_1"):
        choose(study, trials, tmp_path / "study")


@pytest.mark.parametrize("grid,message", [
    ({"sizes": [3], "base_lr": [0.01]}, "grid.sizes' = \\[3\\]: not among the study's data_sizes"),
    ({"sizes": [2], "arm": "imagenet", "base_lr": [0.01]}, "grid.arm' = 'imagenet': not an arm"),
    ({"sizes": [2], "scratch_sizes": ["all"], "base_lr": [0.01]}, "also list them in grid.sizes"),
    ({"sizes": [2], "metric": "AP", "base_lr": [0.01]}, "grid.metric"),
])
def test_a_grid_naming_what_the_study_lacks_is_refused(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        load_study(make_study(tmp_path, grid=grid))


def test_a_grid_with_nothing_to_search_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="at least one of base_lr, decay_factor, train_scales"):
        load_study(make_study(tmp_path, grid={"sizes": [2]}))


@pytest.mark.slow
def test_a_study_with_a_grid_trains_the_trials_then_the_runs_with_the_choice(tmp_path):
    """End to end: two trials on the tuned arm, the choice used by both arms' runs, the report's table."""
    path = make_study(tmp_path, arms=["scratch", {"name": "tuned", "overrides": {"train.seed": 1}}],
                      schedules=["1x"], data_sizes=[2], grid={"sizes": [2], "arm": "tuned",
                                                              "base_lr": [0.0, 0.02]})
    sd = run_study(path)
    g = json.loads((sd / "grid.json").read_text())
    assert [t["run"] for t in g["trials"]] == ["grid_2_tuned_0", "grid_2_tuned_1"]
    chosen = g["choices"]["2"]["*"]["train.base_lr"]
    plan = json.loads((sd / "plan.json").read_text())
    assert [t["name"] for t in plan["grid_trials"]] == ["grid_2_tuned_0", "grid_2_tuned_1"]
    assert all(r["name"].startswith(("scratch_", "tuned_")) for r in plan["runs"])  # trials are not study runs
    for run in ("scratch_2_1x_s0", "tuned_2_1x_s0"):  # what the runs trained with: the grid's choice
        assert f"base_lr: {chosen}" in (sd / "runs" / run / "config.yaml").read_text()
    text = write_report(sd)[0].read_text()
    assert "## Hyper-parameter grid" in text and "| 2 | tuned | base_lr=0.0 |" in text and "**yes**" in text


def test_changed_grid_values_are_not_credited_to_old_trials(tmp_path):
    study, base = load_study(make_study(tmp_path, grid={"sizes": [2], "base_lr": [0.01, 0.04]}))
    sd = tmp_path / "study"
    trials, configs = plan_trials(study, base, sd, 4)
    from fromscratch.config import dump_config

    for t in trials:
        _eval_line(t.folder(sd), 12, 1.0)
        (t.folder(sd) / "config.yaml").write_text(dump_config(configs[t.name]))
    choose(study, trials, sd)  # same values: fine
    changed, _ = load_study(make_study(tmp_path, grid={"sizes": [2], "base_lr": [0.02, 0.04]}))
    with pytest.raises(ConfigError, match="grid_2_pretrained_0 trained with train.base_lr=0.01"):
        choose(changed, trials, sd)


def test_status_lists_the_grid_trials(tmp_path):
    from fromscratch.study.status import status_lines

    sd = tmp_path / "study"
    sd.mkdir()
    trial = {"name": "grid_2_pre_0", "total_iters": 12}
    (sd / "plan.json").write_text(json.dumps({"runs": [{"name": "pre_2_1x_s0", "total_iters": 12}],
                                              "grid_trials": [trial]}))
    lines = status_lines(sd)
    assert lines[0].endswith("1 runs (and 1 grid trials)") and "grid_2_pre_0" in lines[1]
