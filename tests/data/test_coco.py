import json

import numpy as np

from fromscratch.data.coco import dataset_to_coco, load_coco
from tests.conftest import make_coco


def test_records_from_coco(coco_path):
    ds = load_coco(coco_path)
    r = ds.records[0]
    assert ds.class_names == ["cat", "dog"]
    assert ds.label_to_cat_id == {1: 3, 2: 7}
    np.testing.assert_allclose(r.boxes[0], [2, 3, 12, 11])  # xywh -> xyxy
    assert r.boxes.dtype == np.float32
    assert r.labels.tolist() == [1, 2, 1]
    assert r.iscrowd.tolist() == [False, False, True]
    assert r.keypoints.shape == (3, 3, 3)
    masks = r.masks()  # polygon, compressed RLE, uncompressed RLE
    assert masks.shape == (3, r.height, r.width)
    assert masks[1, 20:30, 15:25].all() and masks[1].sum() == 100
    assert masks[2, 0:5, 30:40].all() and masks[2].sum() == 50
    assert masks[0, 4:10, 3:11].all()


def test_round_trip(coco_path):
    original = json.loads(coco_path.read_text())
    back = dataset_to_coco(load_coco(coco_path))
    assert back["categories"] == original["categories"]
    assert [i["id"] for i in back["images"]] == [i["id"] for i in original["images"]]
    by_id = {a["id"]: a for a in back["annotations"]}
    for a in original["annotations"]:
        b = by_id[a["id"]]
        assert b["category_id"] == a["category_id"] and b["iscrowd"] == a["iscrowd"]
        np.testing.assert_allclose(b["bbox"], a["bbox"])
        np.testing.assert_allclose(b["keypoints"], a["keypoints"])
        assert b["segmentation"] == a["segmentation"]
    # and again: records -> coco -> records is stable
    path2 = coco_path.parent / "again.json"
    path2.write_text(json.dumps(back))
    assert dataset_to_coco(load_coco(path2))["annotations"] == back["annotations"]


def test_subset(tmp_path):
    ds = load_coco(make_coco(tmp_path, num_images=6))
    assert [r.image_id for r in ds.subset([2, 5]).records] == [2, 5]
