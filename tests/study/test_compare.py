"""`fromscratch compare`: two sets of runs, each metric's gap with its paired-bootstrap interval."""
import json
from pathlib import Path

import pytest

from fromscratch.cli import main
from fromscratch.config import dump_config, load_config
from fromscratch.errors import FromScratchError
from fromscratch.study.compare import compare_runs
from tests.conftest import ROOT, make_coco


def _run(folder: Path, ann: Path, keep: float, shift: float, max_images: int = 100) -> Path:
    """A finished run folder whose final detections are the ground truth's non-crowd boxes: ``keep`` of
    them (by image), moved by ``shift`` px."""
    gt = json.loads(ann.read_text())
    cfg = load_config(ROOT / "configs/models/cpu.yaml", [f"data.train={ann}", f"data.val={ann}",
                                                         f"eval.max_images={max_images}"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    n_img = len(gt["images"])
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]]}
            for a in gt["annotations"] if not a["iscrowd"] and a["image_id"] <= keep * n_img]
    (folder / "eval").mkdir()
    (folder / "eval" / "detections_0000010.json").write_text(json.dumps(dets))
    ap = 100.0 * keep  # what pycocotools gives for exact boxes on a ``keep`` share of the images
    (folder / "metrics.jsonl").write_text(json.dumps(
        {"type": "eval", "iteration": 10, "bbox": {"AP": ap, "AP50": ap, "AP75": ap}}) + "\n")
    return folder


def test_a_clear_gap_is_decided_and_equal_sides_are_within(tmp_path):
    ann = make_coco(tmp_path / "data", num_images=40, keypoints=False)
    a = [_run(tmp_path / f"a{i}", ann, 1.0, 0.0) for i in range(2)]
    b = [_run(tmp_path / f"b{i}", ann, 0.5, 0.0) for i in range(2)]
    c = compare_runs(a, b, margin=1.0, seed_std=1.0, names=("full", "half"))
    row = next(r for r in c["rows"] if r["metric"] == "bbox.AP")
    assert row["gap"] == pytest.approx(50.0) and row["lo"] > 1.0 and row["decision"] == "full ahead"
    assert row["images_resampled"] and row["seeds_measured"]
    same = compare_runs(a, [_run(tmp_path / "c", ann, 1.0, 0.0)], margin=1.0, seed_std=0.1)
    row = next(r for r in same["rows"] if r["metric"] == "bbox.AP")
    assert row["gap"] == 0.0 and row["decision"] == "within ±1"


def test_cli_prints_the_table_and_refuses_different_validation_sets(tmp_path, capsys):
    ann = make_coco(tmp_path / "data", num_images=12, keypoints=False)
    a = _run(tmp_path / "a", ann, 1.0, 0.0)
    b = _run(tmp_path / "b", ann, 0.5, 0.0)
    assert main(["compare", "--a", str(a), "--b", str(b), "--names", "fp32", "bf16",
                 "--out", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "| metric | fp32 | bf16 | gap | interval | decision |" in out
    assert "| bbox.AP | 100.0 | 50.0 | +50.00 |" in out
    assert "assumed --seed-std" in out
    assert json.loads((tmp_path / "c.json").read_text())["names"] == ["fp32", "bf16"]
    other = _run(tmp_path / "other", ann, 1.0, 0.0, max_images=5)
    with pytest.raises(FromScratchError, match="different validation sets"):
        compare_runs([a], [other])
    with pytest.raises(FromScratchError, match="not a run folder"):
        compare_runs([a], [tmp_path])
