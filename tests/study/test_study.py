"""Planning, sample accounting, the verdict and the report, on tiny real runs and synthetic metrics."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from fromscratch.engine.checkpoint import load_checkpoint
from fromscratch.study.plan import chains, load_study, plan_runs
from fromscratch.study.report import write_report
from fromscratch.study.runner import execute, run_study
from tests.conftest import ROOT, make_coco


def make_study(tmp: Path, **over) -> Path:
    ann = make_coco(tmp / "data", num_images=4, size=(64, 64))
    s = {"description": "tiny", "detector": str(ROOT / "configs/models/cpu.yaml"),
         "overrides": {"data.train": str(ann), "data.val": str(ann), "data.train_scales": [64],
                       "data.test_scale": 64, "data.max_size": 64, "data.num_workers": 0, "train.warmup_iters": 2,
                       "train.threads": 2, "model.meta_arch": "faster_rcnn"},
         "arms": ["scratch", "pretrained"], "schedules": ["2x", "1x"], "data_sizes": ["all", 2], "seeds": [0],
         "eval_points": 2, "pretrain": {"max_images": 256, "image_size": 32, "batch_size": 64, "val_images": 256,
                                        "warmup_iters": 1},
         "output_dir": str(tmp / "study")}
    s.update(over)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def test_plan_arms_schedules_sizes_seeds_and_branches(tmp_path):
    study, base = load_study(make_study(tmp_path, seeds=[0, 1]))
    runs, configs = plan_runs(study, base, tmp_path / "study", train_size=4)
    assert len(runs) == 2 * 2 * 2 * 2
    names = {r.name for r in runs}
    assert "scratch_all_1x_s0" in names and "pretrained_2_2x_s1" in names
    r2 = next(r for r in runs if r.name == "scratch_all_2x_s0")
    r1 = next(r for r in runs if r.name == "scratch_all_1x_s0")
    # 1x on 4 images at batch 2: 24 iterations, first drop 8; 2x: 49, branches from 1x at 8
    assert (r1.total_iters, r1.first_drop) == (24, 8) and r2.total_iters == 49
    assert (r2.branch_from, r2.branch_iter) == ("scratch_all_1x_s0", 8)
    assert "train.checkpoint_at=[8]" in r1.overrides and configs[r1.name].train.checkpoint_at == [8]
    assert configs[r2.name].train.schedule == "2x" and configs[r2.name].output_dir == str(r2.folder(tmp_path / "study"))
    small = next(r for r in runs if r.name == "scratch_2_1x_s0")
    assert any(o.startswith("data.subset=") for o in small.overrides) and small.total_iters == 12
    for chain in chains(runs):  # the prefix comes first in its chain
        assert chain[0].branch_from is None and all(c.branch_from == chain[0].name for c in chain[1:])


def test_complete_runs_are_skipped(tmp_path):
    study, base = load_study(make_study(tmp_path))
    sd = tmp_path / "study"
    runs, configs = plan_runs(study, base, sd, 4)
    run = runs[0]
    run.folder(sd).mkdir(parents=True)
    (run.folder(sd) / f"model_{run.total_iters:07d}.pth").write_bytes(b"")
    assert execute(run, configs[run.name], study, sd).endswith("complete, skipped")


@pytest.mark.slow
def test_tiny_study_end_to_end_with_accounting(tmp_path):
    path = make_study(tmp_path, data_sizes=["all"])
    sd = run_study(path)
    report, verdicts = write_report(sd)
    acct = json.loads((sd / "pretrain" / "accounting.json").read_text())
    assert acct["images"] == 256 and acct["pixels"] == 256 * 32 * 32 and not acct["estimate"]
    # the 2x run branched from the 1x run at its first drop, and still equals a run from 0:
    branch = json.loads((sd / "runs" / "scratch_all_2x_s0" / "branch.json").read_text())
    assert branch == {"from": "scratch_all_1x_s0", "iteration": 8}
    ev = [json.loads(x) for x in (sd / "runs" / "scratch_all_2x_s0" / "metrics.jsonl").read_text().splitlines()]
    final = [e for e in ev if e["type"] == "eval"][-1]
    assert final["iteration"] == 49 and final["samples_seen"]["images"] == 49 * 2
    assert final["samples_seen"]["instances"] == 49 * 2 * 2  # 2 non-crowd instances per image
    assert final["samples_seen"]["pixels"] == 49 * 2 * 64 * 64
    text = report.read_text()
    assert "scratch vs pretrained" in text and "256 images" in text and "Shared prefixes" in text
    for png in ("ap_vs_iterations.png", "ap_vs_samples.png", "loss_and_ap.png"):
        assert (sd / png).stat().st_size > 1000
    # the branched 2x equals a 2x trained from 0 (same LR and batches until the branch point)
    from fromscratch.config import load_config
    from fromscratch.engine.trainer import train

    cfg = load_config(sd / "configs" / "scratch_all_2x_s0.yaml")
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "fresh")})
    train(cfg)
    a = load_checkpoint(tmp_path / "fresh" / "model_0000049.pth")["model"]
    b = load_checkpoint(sd / "runs" / "scratch_all_2x_s0" / "model_0000049.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # re-running the study trains nothing and the report is rebuilt from the folders alone
    assert run_study(path) == sd


def test_a_schedule_added_later_branches_from_the_latest_checkpoint_before_the_drop(tmp_path):
    """1x ran before 2x was declared, so it kept no checkpoint at its first drop (8): 2x starts from its
    latest one before the drop (6), with 1x's metrics up to there. Up to the drop both train at the same LR
    on the same batches, and a resume is exact (tests/engine/test_faults.py), so this equals training from 0;
    with no checkpoint before the drop it trains from 0."""
    from fromscratch.study.plan import PlannedRun
    from fromscratch.study.runner import seed_from_prefix

    sd = tmp_path / "study"
    one = sd / "runs" / "scratch_all_1x_s0"
    one.mkdir(parents=True)
    for i in (6, 12, 24):
        (one / f"model_{i:07d}.pth").write_bytes(f"state {i}".encode())
    (one / "model_best.pth").write_bytes(b"best")
    (one / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "iteration": i}) + "\n"
                                               for i in range(1, 25)))
    two = PlannedRun("scratch_all_2x_s0", "scratch", "all", "2x", 0, [], 49, 33, "scratch_all_1x_s0", 8)
    seed_from_prefix(two, sd)
    folder = two.folder(sd)
    assert sorted(p.name for p in folder.glob("model_*")) == ["model_0000006.pth"]
    assert (folder / "model_0000006.pth").read_bytes() == b"state 6"
    assert [json.loads(x)["iteration"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4,
                                                                                                       5, 6]
    assert json.loads((folder / "branch.json").read_text()) == {"from": "scratch_all_1x_s0", "iteration": 6}
    (one / "model_0000006.pth").unlink()  # nothing at or before the drop: the run starts from 0
    late = PlannedRun("scratch_all_4x_s0", "scratch", "all", "4x", 0, [], 98, 82, "scratch_all_1x_s0", 8)
    seed_from_prefix(late, sd)
    assert not late.folder(sd).exists()

def _fake_run(sd: Path, name: str, total: int, aps: list[float], images: int) -> dict:
    folder = sd / "runs" / name
    folder.mkdir(parents=True)
    lines = []
    for i, ap in enumerate(aps):
        it = total * (i + 1) // len(aps)
        seen = {"images": images * it // total, "instances": 0, "pixels": 0}
        lines.append({"type": "train", "iteration": it, "loss": 1.0 / (i + 1), "samples_seen": seen})
        lines.append({"type": "eval", "iteration": it, "bbox": {"AP": ap, "AP50": ap + 10, "AP75": ap - 5},
                      "samples_seen": seen})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"name": name, "total_iters": total}


def _synthetic_study(sd: Path, seed_std: float) -> None:
    (sd / "pretrain").mkdir(parents=True)
    (sd / "pretrain" / "accounting.json").write_text(json.dumps(
        {"images": 5000, "instances": 5000, "pixels": 5e6, "estimate": False, "source": "fashion-mnist"}))
    finals = {("scratch", "all", "1x"): [10, 20], ("scratch", "all", "2x"): [20, 31.0],
              ("pretrained", "all", "1x"): [25, 31], ("pretrained", "all", "2x"): [28, 31.2],
              ("scratch", "100", "1x"): [2, 5], ("scratch", "100", "2x"): [4, 8],
              ("pretrained", "100", "1x"): [10, 15], ("pretrained", "100", "2x"): [12, 16],
              ("scratch", "10", "1x"): [0, 0.2], ("scratch", "10", "2x"): [0, 0.5],
              ("pretrained", "10", "1x"): [0.1, 0.3], ("pretrained", "10", "2x"): [0.2, 1.5]}
    runs = []
    for (arm, size, sched), aps in finals.items():
        total = 100 if sched == "1x" else 200
        r = _fake_run(sd, f"{arm}_{size}_{sched}_s0", total, aps, 2 * total)
        runs.append({**r, "arm": arm, "size": size if size == "all" else int(size), "schedule": sched, "seed": 0,
                     "overrides": [], "first_drop": total // 3, "branch_from": None, "branch_iter": 0})
    plan = {"study": {"arms": [{"name": "scratch", "weights": None}, {"name": "pretrained", "weights": "stage"}],
                      "schedules": ["1x", "2x"], "data_sizes": ["all", 100, 10], "seeds": [0], "margin": 1.0,
                      "seed_std": seed_std, "description": "synthetic"},
            "detector": "x", "train_size": 1000, "runs": runs}
    (sd / "plan.json").write_text(json.dumps(plan))


def test_verdict_on_synthetic_metrics(tmp_path):
    """At 'all' scratch comes within ±1 AP at 2x; at 100 images pre-training is ahead (the breakdown
    regime); at 10 images too little was learned. One seed, a small assumed seed spread (0.3 AP)."""
    sd = tmp_path
    _synthetic_study(sd, seed_std=0.3)
    path, texts = write_report(sd)
    v = {x["size"]: x for x in json.loads((sd / "verdict.json").read_text())}
    assert v["all"]["decision"] == "within" and v["all"]["catch_schedule"] == "2x"
    assert v["all"]["gaps"]["bbox.AP"]["gap"] == pytest.approx(0.2)  # 31.2 vs 31.0
    lo, hi = v["all"]["gaps"]["bbox.AP"]["lo"], v["all"]["gaps"]["bbox.AP"]["hi"]
    assert -1 < lo < 0.2 < hi < 1 and not v["all"]["gaps"]["bbox.AP"]["seeds_measured"]
    assert v["all"]["scratch_images"] == 400 and v["all"]["pretrained_images"] == 400 + 5000
    assert v["all"]["same_schedule"]["1x"]["gap"] == pytest.approx(11.0)  # 1x finals: 31 vs 20
    assert v["100"]["decision"] == "pretrained ahead" and v["100"]["gaps"]["bbox.AP"]["gap"] == pytest.approx(8.0)
    assert v["10"]["decision"] == "too little learning" and "too little learning to tell" in texts[2]
    assert "scratch is within ±1 AP of pre-training" in texts[0] and "from the 2x schedule on" in texts[0]
    assert "pre-training is ahead by more than 1 AP" in texts[1] and "90% interval" in texts[1]
    assert "box AP50" in texts[1] and "box AP75" in texts[1]  # every metric with its interval
    assert "One seed" in texts[0] and "seed_std" in texts[0]
    report = path.read_text()
    assert "| all | scratch | 20.0 | 31.0 |" in report and "## Gaps with intervals" in report
    assert v["all"]["forecast"]["scratch"] and (sd / "forecast.png").stat().st_size > 1000


def test_one_seed_with_the_default_spread_is_undecided_and_says_what_decides(tmp_path):
    _synthetic_study(tmp_path, seed_std=1.0)
    write_report(tmp_path)
    v = {x["size"]: x for x in json.loads((tmp_path / "verdict.json").read_text())}
    assert v["all"]["decision"] == "undecided" and "seeds per arm" in v["all"]["to_decide"]
    assert v["100"]["decision"] == "pretrained ahead"  # 8 AP is beyond any reasonable seed noise


@pytest.mark.slow
def test_parallel_study_runs_subprocesses(tmp_path):
    """parallel: 2 runs chains as 1-thread `fromscratch train` subprocesses (what `make demo` does)."""
    path = make_study(tmp_path, arms=["scratch", {"name": "scratch_b", "overrides": {"train.seed": 1}}],
                  schedules=["1x"], data_sizes=[2], parallel=2)
    sd = run_study(path)
    for name in ("scratch_2_1x_s0", "scratch_b_2_1x_s0"):
        assert (sd / "runs" / name / "model_0000012.pth").exists(), (sd / "runs" / name / "log.txt").read_text()
        assert "threads: 1" in (sd / "runs" / name / "config.yaml").read_text()


def test_pretrain_from_image_folder(tmp_path):
    """An ImageNet-style folder (train/<class>/*, val/<class>/*) as the pre-training source."""
    import numpy as np
    from PIL import Image

    from fromscratch.config import load_config
    from fromscratch.study.pretrain import pretrain

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, value in (("dark", 30), ("bright", 220)):
            (tmp_path / "src" / split / cls).mkdir(parents=True)
            for i in range(6):
                arr = np.clip(value + rng.normal(0, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / "src" / split / cls / f"{i}.png")
    cfg = load_config("configs/models/cpu.yaml", [f"pretrain.source={tmp_path / 'src'}", "pretrain.image_size=32",
                                                  "pretrain.batch_size=4", "pretrain.epochs=2",
                                                  "pretrain.warmup_iters=1", f"pretrain.output={tmp_path / 'out'}"])
    r = pretrain(cfg)
    assert r["images"] == 24 and r["epochs"] == 2 and r["pixels"] == 24 * 32 * 32  # 12 images x 2 epochs
    assert r["val_top1"] is not None
    sd = load_checkpoint(tmp_path / "out" / "backbone.pth")
    assert "layer4.1.conv2.weight" in sd and not any(k.startswith("fc.") for k in sd)


@pytest.mark.slow
def test_suite_runs_each_part_and_joins_the_reports(tmp_path):
    """A suite (configs/claims.yaml) runs its studies in order, each in its own folder, and one report
    joins theirs; running it again trains nothing."""
    parts = []
    for name in ("a", "b"):
        p = make_study(tmp_path / name, arms=["scratch"], schedules=["1x"], data_sizes=[2], eval_points=1)
        parts.append(str(p.rename(tmp_path / f"{name}.yaml").name))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"description": "two parts", "parts": parts, "output_dir": str(tmp_path / "out")}))
    sd = run_study(suite)
    for name in ("a", "b"):
        assert (sd / name / "runs" / "scratch_2_1x_s0" / "model_0000012.pth").exists()
    report, verdicts = write_report(sd)
    text = report.read_text()
    assert text.startswith("# Study report: two parts") and "](a/ap_vs_iterations.png)" in text
    assert "](b/ap_vs_iterations.png)" in text and "## Study report: tiny" in text
    assert (sd / "a" / "report.md").exists() and (sd / "b" / "report.md").exists()
    before = (sd / "a" / "runs" / "scratch_2_1x_s0" / "metrics.jsonl").read_text()
    run_study(suite)
    assert (sd / "a" / "runs" / "scratch_2_1x_s0" / "metrics.jsonl").read_text() == before


def test_suite_names_a_missing_part(tmp_path):
    from fromscratch.errors import ConfigError

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"parts": ["nope.yaml"]}))
    with pytest.raises(ConfigError, match=r"suite.yaml: key 'parts': no such study file.*nope.yaml"):
        run_study(suite)


def test_one_count_of_training_images_with_skipped_invalid_ones(tmp_path):
    """With data.on_invalid=skip, the study plans for the images a run trains on, and `schedule` counts
    the same: all three go through data/build.py (an unreadable image is dropped by all)."""
    import warnings

    from fromscratch.config import load_config
    from fromscratch.data.build import build_datasets, train_image_ids, train_stats

    path = make_study(tmp_path, data_sizes=["all"])
    (tmp_path / "data" / "images" / "img1.png").write_bytes(b"not a png")  # image id 2
    raw = yaml.safe_load(path.read_text())
    raw["overrides"]["data.on_invalid"] = "skip"
    path.write_text(yaml.safe_dump(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = run_study(path, plan_only=True)
        cfg = load_config(sd / "configs" / "scratch_all_1x_s0.yaml")
        train, _ = build_datasets(cfg.data)
        assert train_image_ids(cfg.data) == [r.image_id for r in train.records] == [1, 3, 4]
        assert train_stats(cfg.data)[0] == 3
    assert json.loads((sd / "plan.json").read_text())["train_size"] == 3
