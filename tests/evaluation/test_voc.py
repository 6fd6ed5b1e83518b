"""VOC mAP against a hand computation, with a difficult object ignored."""
import numpy as np
import pytest

from fromscratch.data.records import Dataset, Record
from fromscratch.evaluation.voc import average_precision, evaluate_voc, voc_map


def _ds():
    r1 = Record(1, "a.jpg", 100, 100, np.array([[0, 0, 10, 10], [50, 50, 70, 70], [20, 20, 30, 30]], np.float32),
                np.array([1, 1, 1]), np.zeros(3, bool), difficult=np.array([False, False, True]))
    r2 = Record(2, "b.jpg", 100, 100, np.array([[0, 0, 20, 20]], np.float32), np.array([1]), np.zeros(1, bool),
                difficult=np.array([False]))
    return Dataset([r1, r2], [{"id": 9, "name": "dog"}])


def _d(iid, box, score):
    return {"image_id": iid, "category_id": 9, "bbox": box, "score": score}


def test_hand_computed_map():
    # 3 non-difficult objects. By score: TP (img1 obj0), hit on the difficult one (ignored),
    # FP (nothing there), TP (img2), duplicate of img1 obj0 (FP). Obj (50,50) is missed.
    dets = [_d(1, [0, 0, 10, 10], 0.9), _d(1, [20, 20, 10, 10], 0.85), _d(1, [80, 80, 10, 10], 0.8),
            _d(2, [0, 0, 20, 20], 0.7), _d(1, [0, 0, 10, 9], 0.6)]
    # kept detections: TP, FP, TP, FP -> recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2
    # area: envelope 1 on [0, 1/3], 2/3 on (1/3, 2/3] -> 1/3 * 1 + 1/3 * 2/3 = 5/9
    m = voc_map(_ds(), dets)
    assert m["mAP"] == pytest.approx(100 * 5 / 9)
    # 11-point: recall >= 0, .1, .2, .3 -> 1 (4 points); .4, .5, .6 -> 2/3 (3 points); .7 .. 1 -> 0
    assert voc_map(_ds(), dets, method="11point")["mAP"] == pytest.approx(100 * (4 + 3 * 2 / 3) / 11)
    out = evaluate_voc(_ds(), dets)
    assert out["AP50"] == out["AP"] and out["per_category"][9] == pytest.approx(100 * 5 / 9)


def test_perfect_and_empty():
    ds = _ds()
    perfect = [_d(1, [0, 0, 10, 10], 0.9), _d(1, [50, 50, 20, 20], 0.8), _d(2, [0, 0, 20, 20], 0.7)]
    assert voc_map(ds, perfect)["mAP"] == pytest.approx(100)
    assert voc_map(ds, [])["mAP"] == 0
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
