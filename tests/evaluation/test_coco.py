"""COCO AP: hand-computed cases, and faster-coco-eval equal to pycocotools (the reference) on the
embedded val sets with realistic detections (jittered ground truth with false positives)."""
import numpy as np
import pytest

from fromscratch.data.coco import dataset_to_coco, load_coco
from fromscratch.data.masks import decode_segmentation, encode_mask
from fromscratch.evaluation.coco import STAT_NAMES, evaluate
from tests.conftest import make_coco, prepared

GT = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
      "categories": [{"id": 5, "name": "thing"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0}]}


def _det(box, score):
    return {"image_id": 1, "category_id": 5, "bbox": box, "score": score}


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_hand_computed_ap(backend):
    perfect = evaluate(GT, [_det([10, 10, 20, 20], 0.9), _det([50, 50, 30, 30], 0.8)], "bbox", backend)
    assert perfect["AP"] == pytest.approx(100) and perfect["AP75"] == pytest.approx(100)
    # hit (0.9), false positive (0.8), hit (0.7): precision 1 up to recall 0.5, then 2/3
    # 101-point interpolation: (51 * 1 + 50 * 2/3) / 101
    m = evaluate(GT, [_det([10, 10, 20, 20], 0.9), _det([0, 70, 10, 10], 0.8), _det([50, 50, 30, 30], 0.7)],
                 "bbox", backend)
    assert m["AP"] == pytest.approx(100 * (51 + 50 * 2 / 3) / 101, abs=1e-6)
    assert m["per_category"][5] == pytest.approx(m["AP"], abs=1e-6)
    assert evaluate(GT, [], "bbox", backend)["AP"] == 0


def _jittered(ds, seed=0, segm=True):
    rng = np.random.default_rng(seed)
    l2c = ds.label_to_cat_id
    out = []
    for r in ds.records:
        for i in range(r.num_instances):
            if rng.random() < 0.15:
                continue  # a miss
            x0, y0, x1, y1 = r.boxes[i]
            w, h = x1 - x0, y1 - y0
            dx, dy, dw, dh = rng.normal(0, 0.08, 4) * [w, h, w, h]
            box = [float(x0 + dx), float(y0 + dy), float(max(1, w + dw)), float(max(1, h + dh))]
            det = {"image_id": r.image_id, "category_id": l2c[int(r.labels[i])], "bbox": box,
                   "score": float(rng.random())}
            if segm and r.segmentations is not None:
                m = decode_segmentation(r.segmentations[i], r.height, r.width)
                det["segmentation"] = encode_mask(np.roll(m, int(rng.integers(-2, 3)), axis=1))
            out.append(det)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, r.width - 20), rng.uniform(0, r.height - 20)
            det = {"image_id": r.image_id, "category_id": l2c[int(rng.integers(1, ds.num_classes + 1))],
                   "bbox": [float(x), float(y), 20.0, 20.0], "score": float(rng.random() * 0.5)}
            if segm and r.segmentations is not None:
                m = np.zeros((r.height, r.width), dtype=np.uint8)
                m[int(y):int(y) + 20, int(x):int(x) + 20] = 1
                det["segmentation"] = encode_mask(m)
            out.append(det)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name,types", [("trees", ["bbox"]), ("fashion-scenes", ["bbox", "segm"])])
def test_backends_agree_on_embedded_val(name, types):
    ds = load_coco(prepared(name, "val.json"))
    gt, dets = dataset_to_coco(ds), _jittered(ds)
    for t in types:
        fast, ref = evaluate(gt, dets, t, "faster_coco_eval"), evaluate(gt, dets, t, "pycocotools")
        assert 5 < ref["AP"] < 95  # a real range, not a trivial 0 or 100
        for k in STAT_NAMES:
            assert fast[k] == pytest.approx(ref[k], abs=1e-6), (t, k)
        for c in ref["per_category"]:
            assert fast["per_category"][c] == pytest.approx(ref["per_category"][c], abs=1e-6, nan_ok=True)


def test_backends_agree_on_keypoints(tmp_path):
    ds = load_coco(make_coco(tmp_path, num_images=4))
    gt = dataset_to_coco(ds)
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        kp = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
        kp[:, :2] += rng.normal(0, 1.0, (len(kp), 2))
        kp[:, 2] = 1
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                     "keypoints": kp.reshape(-1).tolist(), "score": float(rng.random())})
    fast, ref = evaluate(gt, dets, "keypoints", "faster_coco_eval"), evaluate(gt, dets, "keypoints", "pycocotools")
    assert ref["AP"] > 0
    for k in ("AP", "AP50", "AP75", "AR"):
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k


@pytest.mark.slow
def test_backends_agree_on_real_model_outputs(tmp_path):
    """A CPU Mask R-CNN trained briefly on fashion-scenes: its real detections, both backends."""
    from fromscratch.config import load_config
    from fromscratch.engine.trainer import train

    val = prepared("fashion-scenes", "val.json")
    cfg = load_config("configs/models/cpu.yaml", [
        f"data.train={prepared('fashion-scenes')}", f"data.val={val}", "data.train_scales=[128]",
        "data.test_scale=128", "train.iterations=30", "train.steps=[25]", "train.warmup_iters=5",
        "eval.max_images=40", "data.num_workers=0", "model.roi.score_thresh=0.0", f"output_dir={tmp_path}"])
    train(cfg)
    import json

    dets = json.loads((tmp_path / "eval" / "detections_0000030.json").read_text())
    ds = load_coco(val)
    gt = dataset_to_coco(ds.subset([r.image_id for r in ds.records[:40]]))
    assert len(dets) > 100
    for t in ("bbox", "segm"):
        fast, ref = evaluate(gt, dets, t, "faster_coco_eval"), evaluate(gt, dets, t, "pycocotools")
        for k in STAT_NAMES:
            assert fast[k] == pytest.approx(ref[k], abs=1e-6), (t, k)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_evaluate_leaves_its_inputs_untouched(tmp_path, backend):
    """The evaluators annotate the records they get (area, id, ignore); evaluate hands them copies."""
    import json

    ds = load_coco(make_coco(tmp_path, num_images=3))
    gt, dets = dataset_to_coco(ds), _jittered(ds)
    assert any("segmentation" in d for d in dets)
    before = json.dumps([gt, dets], sort_keys=True, default=str)
    for t in ("bbox", "segm"):
        evaluate(gt, dets, t, backend)
    assert json.dumps([gt, dets], sort_keys=True, default=str) == before
