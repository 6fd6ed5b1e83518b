"""The verdict's statistics against known truth: AP on resampled images equals pycocotools, bootstrap
intervals cover a known gap at their stated rate, the decision rule, and forecasts of known curves."""
import json
import statistics

import numpy as np
import pytest

from fromscratch.evaluation.bootstrap import CategoryMatches, PerImageMatches, ap_of, match_per_image
from fromscratch.evaluation.coco import evaluate
from fromscratch.study import forecast as fc
from fromscratch.study.stats import Gap, compare, decide, what_would_decide
from tests.conftest import prepared

THRS = np.linspace(0.5, 0.95, 10)


def _fake_results(gt: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        for j in range(3):  # a good, a shifted and a wrong-class detection per object
            cat = a["category_id"] if j < 2 else int(rng.integers(1, 11))
            out.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                        "bbox": [v + rng.normal(0, 1 + 3 * j) for v in a["bbox"]],
                        "segmentation": a["segmentation"]})
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_all_ones_weights_give_pycocotools_ap(iou_type):
    gt = json.loads(prepared("fashion-scenes", "val.json").read_text())
    gt["images"] = gt["images"][:40]
    ids = {i["id"] for i in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    res = _fake_results(gt, 0)
    ours = ap_of(match_per_image(gt, res, iou_type))
    ref = evaluate(gt, res, iou_type, "pycocotools")
    for k in ("AP", "AP50", "AP75"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
    # an image counted twice is the same as its detections and ground truth written twice
    m = match_per_image(gt, res, iou_type)
    w = np.ones(len(m.image_ids), dtype=int)
    w[0] = 2
    first = int(m.image_ids[0])
    extra = max(ids) + 1
    gt2 = {**gt, "images": gt["images"] + [{**next(i for i in gt["images"] if i["id"] == first), "id": extra}],
           "annotations": gt["annotations"] + [{**a, "id": 10 ** 6 + a["id"], "image_id": extra}
                                               for a in gt["annotations"] if a["image_id"] == first]}
    res2 = res + [{**r, "image_id": extra} for r in res if r["image_id"] == first]
    assert ap_of(m, w)["AP"] == pytest.approx(evaluate(gt2, res2, iou_type, "pycocotools")["AP"], abs=1e-9)


def _population(n: int, quality: float, seed: int) -> list[list[tuple[float, np.ndarray, int]]]:
    """Per image, per category (3), detections (score, tp at 10 IoUs) and the number of ground truths."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        cats = []
        for _c in range(3):
            n_gt = int(rng.integers(0, 4))
            dets = []
            for _g in range(n_gt):
                if rng.random() < 0.85:
                    iou = rng.beta(2 + 6 * quality, 2)
                    dets.append((float(rng.beta(1 + 4 * quality, 2)), iou > THRS))
            for _f in range(int(rng.integers(0, 3))):
                dets.append((float(rng.beta(1, 3)), np.zeros(10, dtype=bool)))
            cats.append((dets, n_gt))
        images.append(cats)
    return images


def _matches(images: list) -> PerImageMatches:
    m = PerImageMatches("bbox", np.arange(len(images)))
    for c in range(3):
        rows = [(s, tp, i) for i, im in enumerate(images) for s, tp in im[c][0]]
        rows.sort(key=lambda r: -r[0])
        tp = np.array([r[1] for r in rows]).T.reshape(10, -1) if rows else np.zeros((10, 0), bool)
        m.categories.append(CategoryMatches(np.array([r[2] for r in rows], dtype=np.int64), tp, ~tp,
                                            np.array([im[c][1] for im in images])))
    return m


@pytest.mark.slow
def test_paired_bootstrap_interval_covers_a_known_gap():
    """Two arms on the same images (a shared population, arm quality differs); the true gap is the
    mean gap over many independent validation sets of the same size. 90% intervals cover it at ~90%."""
    pop_seed = 0
    n_val, draws = 80, 120
    gaps, covered = [], 0
    results = []
    for d in range(draws + 200):
        a = _population(n_val, 0.7, 1000 + d)
        rng = np.random.default_rng(5000 + d)  # the second arm: same images, other detections
        b = [[([(s * rng.uniform(0.8, 1.0), tp & (rng.random(10) < 0.8)) for s, tp in dets], n) for dets, n in im]
             for im in a]
        ma, mb = _matches(a), _matches(b)
        gap = ap_of(ma)["AP"] - ap_of(mb)["AP"]
        gaps.append(gap)
        if d < draws:
            results.append((ma, mb))
    truth = statistics.fmean(gaps[draws:])  # independent of the draws tested
    for ma, mb in results:
        g = compare({"AP": [ap_of(ma)["AP"]]}, {"AP": [ap_of(mb)["AP"]]}, [ma], [mb], "bbox", prior_sd=0.0,
                    rounds=200, seed=pop_seed)["bbox.AP"]
        covered += g.lo <= truth <= g.hi
    assert truth > 2  # a real gap
    assert 0.8 <= covered / draws <= 0.98, covered / draws


def _gap(gap: float, half: float, measured: bool = True) -> Gap:
    return Gap("bbox.AP", gap, gap - half, gap + half, half / 1.645 / 1.4, True, half / 1.645 / 1.4, measured, (3, 3),
               100, 0.9)


@pytest.mark.parametrize("gap,half,expected", [(0.2, 0.5, "within"), (3.0, 1.0, "pretrained ahead"),
                                               (-3.0, 1.0, "scratch ahead"), (0.5, 1.0, "undecided"),
                                               (1.5, 1.0, "undecided"), (0.0, 1.2, "undecided")])
def test_decision_rule(gap, half, expected):
    assert decide(_gap(gap, half), margin=1.0) == expected


def test_what_would_decide_names_seeds_or_images():
    # seed noise dominates: seeds decide it (se needed = 0.7 / 1.645 = 0.425 > the image part, 0.2):
    # 2 x 1.28 / (0.425² − 0.2²) = 18.2 -> 19 seeds
    g = Gap("bbox.AP", 0.3, 0.3 - 1.645 * 0.825, 0.3 + 1.645 * 0.825, 0.2, True, 0.8, True, (2, 2), 100, 0.9)
    r = what_would_decide(g, 1.0, seed_var_per_arm=1.28)
    assert "within ±δ" in r.text and "seeds per arm" in r.text and r.seeds == 19 and r.images is None
    # image noise dominates: validation images decide it
    g = Gap("bbox.AP", 0.3, 0.3 - 1.645 * 0.825, 0.3 + 1.645 * 0.825, 0.8, True, 0.2, True, (2, 2), 100, 0.9)
    r = what_would_decide(g, 1.0, seed_var_per_arm=0.08)
    assert "validation images (now 100)" in r.text and r.images == 455
    assert "both more seeds and more validation images" in what_would_decide(_gap(0.3, 1.5), 1.0, 1.0).text
    assert "at the margin" in what_would_decide(_gap(1.02, 1.5), 1.0, 1.0).text


def test_one_seed_uses_the_prior_and_two_seeds_measure():
    one = compare({"AP": [30.0]}, {"AP": [29.5]}, None, None, "bbox", prior_sd=1.0)["bbox.AP"]
    assert not one.seeds_measured and one.se_seeds == pytest.approx(2 ** 0.5)
    two = compare({"AP": [30.0, 30.4]}, {"AP": [29.5, 29.7]}, None, None, "bbox", prior_sd=1.0)["bbox.AP"]
    assert two.seeds_measured and two.gap == pytest.approx(0.6) and two.hi - two.lo > 0


def test_noise_never_turns_one_definite_verdict_into_another():
    """Single-seed runs that differ by floating-point-sized noise (±0.3 AP per arm): never one says
    'within' and the other 'ahead' (the prior seed spread keeps such runs' intervals honest)."""
    rng = np.random.default_rng(0)
    for gap in np.linspace(-5, 5, 41):
        seen = set()
        for _ in range(20):
            pre, scr = 30 + gap + rng.normal(0, 0.3), 30 + rng.normal(0, 0.3)
            seen.add(decide(compare({"AP": [pre]}, {"AP": [scr]}, None, None, "bbox", prior_sd=1.0)["bbox.AP"], 1.0))
        assert not ({"within"} < seen and seen & {"pretrained ahead", "scratch ahead"}), (gap, seen)
        assert not {"pretrained ahead", "scratch ahead"} <= seen


@pytest.mark.parametrize("c", [0.5, 1.0, 1.8])
def test_forecast_recovers_the_catch_up_schedule(c):
    """Synthetic pow3 curves: pre-trained saturates early, scratch late; from 1x, 2x and 3x the forecast
    names the schedule where scratch comes within δ of the pre-trained best, as the true curves do."""
    rng = np.random.default_rng(1)
    pre_true = lambda m: 40 - 6 * m ** -1.5  # noqa: E731
    scr_true = lambda m: 41 - 30 * m ** -c  # noqa: E731
    grid = [1, 2, 3, 4, 6, 9, 12, 18]
    ref = max(pre_true(m) for m in grid)
    truth = next((m for m in grid if scr_true(m) >= ref - 1.0), None)
    pts = {m: [scr_true(m) + rng.normal(0, 0.2) for _ in range(3)] for m in (1, 2, 3)}
    hit = fc.catch_up(fc.forecast_arm(pts, grid, prior_sd=1.0), ref, 1.0)
    got = hit.schedule if hit else None
    assert got == truth or (got and truth and grid.index(got) - grid.index(truth) in (-1, 1)), (got, truth)
    err = fc.holdout_error({**pts, 6: [scr_true(6)] * 3}, prior_sd=1.0)
    assert err["covered"] and abs(err["error"]) < 3


def test_upper_reach_adds_seed_noise_to_the_forecast_bound_and_needs_a_schedule_left():
    """The claims suite's scratch chain at 30 images after 2x: the bound for a 2-seed mean at 4x is the
    forecast's upper bound widened by the seed noise; nothing is left once 4x is measured."""
    pts = {1.0: [0.8, 0.5], 2.0: [4.6, 4.3]}
    hi = fc.forecast_arm(pts, [4.0], 1.0)[0].hi
    reach = fc.upper_reach(pts, [1.0, 2.0, 4.0], 1.0, n_seeds=2)
    assert hi < reach < hi + 1.0
    assert fc.upper_reach(pts, [1.0, 2.0, 4.0], 1.0, n_seeds=1) > reach  # one seed: a noisier mean
    assert fc.upper_reach({**pts, 4.0: [7.5, 7.8]}, [1.0, 2.0, 4.0], 1.0, n_seeds=2) is None
    assert fc.upper_reach({1.0: [0.8, 0.5]}, [1.0, 2.0], 1.0, n_seeds=2) is None  # no curve from one point


def test_one_schedule_forecasts_nothing():
    assert fc.forecast_arm({1.0: [10.0, 11.0]}, [1, 2, 4], 1.0) == []


def test_forecast_reads_a_committed_report_and_holds_out_its_longest_schedule(tmp_path):
    """The committed claims study keeps its report and cells.json (no run folders): each chain's seed finals."""
    from tests.conftest import ROOT

    folder = ROOT / "docs/results/claims/mask_rcnn"
    pts = fc.study_points(folder)
    assert set(pts) == {(arm, size) for arm in ("scratch", "imagenet") for size in ("all", "300", "100", "30")}
    s_all = pts[("scratch", "all")]
    assert sorted(s_all) == [1, 2, 4] and statistics.fmean(s_all[4]) == pytest.approx(23.7, abs=0.05)
    assert statistics.stdev(s_all[4]) == pytest.approx(1.8, abs=0.05)
    table = fc.holdout_table([folder])
    assert table.count("| 4x |") == 8 and "8 chains: mean absolute error" in table
    (tmp_path / "report.md").write_text((folder / "report.md").read_text())  # an older report, no cells.json
    old = fc.study_points(tmp_path)
    assert set(old) == set(pts) and statistics.fmean(old[("scratch", "all")][4]) == pytest.approx(23.7)
    assert statistics.stdev(old[("scratch", "all")][4]) == pytest.approx(1.8)  # rebuilt from "23.7 ± 1.8"
