import hashlib

import numpy as np

from fromscratch.cli import main
from fromscratch.data.coco import load_coco
from fromscratch.data.embedded.fashion_mnist import CLASSES, load_split
from fromscratch.data.embedded.trees import VAL_RULES
from tests.conftest import DATA, prepared


def test_trees_prepared_and_valid(capsys):
    train, val = load_coco(prepared("trees")), load_coco(prepared("trees", "val.json"))
    assert (len(train.records), train.num_instances()) == (34, 683)
    assert (len(val.records), val.num_instances()) == (13, 237)
    assert train.class_names == ["Tree"]
    # train and val tiles never overlap: different source images or disjoint grid cells
    names_train = {r.file_ref for r in train.records}
    assert not names_train & {r.file_ref for r in val.records}
    for r in val.records:
        stem, rest = r.file_ref[len("images/"):].rsplit("_x", 1)
        assert stem in VAL_RULES and int(rest.split("_y")[1][:-4]) >= VAL_RULES[stem]
    assert main(["validate", str(prepared("trees"))]) == 0


def test_fashion_mnist_splits():
    images, labels = load_split("train")
    assert images.shape == (60000, 28, 28) and labels.max() == 9 and len(CLASSES) == 10
    data = np.load(DATA / "fashion-mnist" / "train.npz")
    assert (data["images"][:100] == images[:100]).all()


def test_fashion_scenes_deterministic_and_exact(tmp_path):
    out = []
    for k in range(2):
        main(["data", "prepare", "fashion-scenes", "--out", str(tmp_path / str(k)), "--num-train", "4",
              "--num-val", "2", "--image-size", "96", "--seed", "5"])
        d = tmp_path / str(k) / "fashion-scenes"
        out.append(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(d.rglob("*.*")))).hexdigest())
    assert out[0] == out[1]  # same seed, same bytes
    ds = load_coco(tmp_path / "0" / "fashion-scenes" / "train.json")
    for r in ds.records:
        masks = r.masks()
        assert len(masks) >= 1
        assert not (masks.sum(0) > 1).any()  # occlusion: visible masks never overlap
        for m, b, kp in zip(masks, r.boxes, r.keypoints):
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == b.tolist()
            # extreme-point keypoints lie on the box border: left, right, top, bottom
            assert kp[0, 0] == xs.min() + 0.5 and kp[1, 0] == xs.max() + 0.5
            assert kp[2, 1] == ys.min() + 0.5 and kp[3, 1] == ys.max() + 0.5 and (kp[:, 2] == 2).all()


def test_fashion_scenes_prepared():
    ds = load_coco(prepared("fashion-scenes", "val.json"))
    assert len(ds.records) == 200 and ds.has_masks and ds.num_classes == 10
