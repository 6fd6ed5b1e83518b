"""Every bad-input case of the foundation issue gives a message naming file, record and field."""
import json
import warnings

import pytest

from fromscratch.cli import main
from fromscratch.data.coco import load_coco
from fromscratch.data.sources import find_problems
from fromscratch.errors import DataError
from tests.conftest import make_coco


def _mutate(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _ann(d, aid):
    return next(a for a in d["annotations"] if a["id"] == aid)


CASES = {
    "missing image file": (lambda d: d["images"][0].update(file_name="images/nope.png"),
                           "image id=1, field 'file_name': image file not found"),
    "size differs": (lambda d: d["images"][1].update(width=99),
                     "image id=2, field 'width/height': json says 99x64"),
    "box w <= 0": (lambda d: _ann(d, 100).update(bbox=[2, 3, 0, 8]), "annotation id=100, field 'bbox': width and height"),
    "box h < 0": (lambda d: _ann(d, 100).update(bbox=[2, 3, 4, -1]), "annotation id=100, field 'bbox': width and height"),
    "box NaN": (lambda d: _ann(d, 100).update(bbox=[2, 3, float("nan"), 8]), "annotation id=100, field 'bbox': non-finite"),
    "box outside": (lambda d: _ann(d, 100).update(bbox=[60, 3, 30, 8]), "annotation id=100, field 'bbox': [60, 3, 30, 8] lies outside"),
    "box not 4 numbers": (lambda d: _ann(d, 100).update(bbox=[1, 2, 3]), "annotation id=100, field 'bbox': expected [x, y, w, h]"),
    "polygon < 3 points": (lambda d: _ann(d, 100).update(segmentation=[[1, 1, 5, 5]]),
                           "annotation id=100, field 'segmentation': polygon 0: fewer than 3 points"),
    "polygon odd coords": (lambda d: _ann(d, 100).update(segmentation=[[1, 1, 5, 5, 7, 7, 9]]),
                           "annotation id=100, field 'segmentation': polygon 0: odd number"),
    "RLE size": (lambda d: _ann(d, 101)["segmentation"].update(size=[10, 10]),
                 "annotation id=101, field 'segmentation': RLE size [10, 10] differs"),
    "keypoints not 3K": (lambda d: _ann(d, 100).update(keypoints=[1, 2, 2, 3]),
                         "annotation id=100, field 'keypoints': expected 3 x 3 = 9 numbers"),
    "unknown category": (lambda d: _ann(d, 100).update(category_id=42), "annotation id=100, field 'category_id': unknown category id 42"),
    "unknown image": (lambda d: _ann(d, 100).update(image_id=999), "annotation id=100, field 'image_id': no image with id 999"),
    "duplicate image id": (lambda d: d["images"].append(dict(d["images"][0])), "image id=1, field 'id': duplicate image id"),
    "duplicate annotation id": (lambda d: d["annotations"].append(dict(d["annotations"][0])),
                                "annotation id=100, field 'id': duplicate annotation id"),
    "empty dataset": (lambda d: d.update(images=[], annotations=[]), "field 'images': the dataset is empty"),
    "path escapes root": (lambda d: d["images"][0].update(file_name="../../etc/passwd"),
                          "image id=1, field 'file_name': '../../etc/passwd' escapes the image root"),
    "missing section": (lambda d: d.pop("categories"), "field 'categories': missing or not a list"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named(tmp_path, case):
    path = make_coco(tmp_path)
    mutate, expected = CASES[case]
    _mutate(path, mutate)
    problems, _ = find_problems(str(path))
    assert any(expected in str(p) for p in problems), [str(p) for p in problems]
    assert all(str(path) in str(p) for p in problems)
    with pytest.raises(DataError, match=expected.split(":")[0].replace("[", r"\[").replace("(", r"\(")):
        load_coco(path)


def test_truncated_image(tmp_path):
    path = make_coco(tmp_path)
    img = tmp_path / "images" / "img0.png"
    img.write_bytes(img.read_bytes()[:200])
    problems, _ = find_problems(str(path))
    assert len(problems) == 1 and "image id=1, field 'file_name': unreadable or truncated image" in str(problems[0])


def test_json_syntax_error_has_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"bad.json: JSON syntax error at line 2, column 12"):
        load_coco(bad)
    problems, _ = find_problems(str(bad))
    assert "line 2, column 12" in str(problems[0])


def test_all_problems_listed_and_cli_exit_code(tmp_path, capsys):
    path = make_coco(tmp_path)
    _mutate(path, lambda d: (_ann(d, 100).update(bbox=[1, 1, 0, 0]), _ann(d, 104).update(category_id=9)))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "annotation id=100" in out and "annotation id=104" in out and "2 problem(s)" in out
    _mutate(path, lambda d: (_ann(d, 100).update(bbox=[1, 1, 2, 2]), _ann(d, 104).update(category_id=3)))
    assert main(["validate", str(path)]) == 0


def test_on_invalid_skip_drops_and_reports(tmp_path):
    path = make_coco(tmp_path)
    _mutate(path, lambda d: (_ann(d, 100).update(bbox=[1, 1, 0, 0]), d["images"][1].update(file_name="images/x.png")))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_coco(path, on_invalid="skip")
    assert "dropped 2" in str(w[0].message)
    assert [r.image_id for r in ds.records] == [1, 3, 4]
    assert 100 not in ds.records[0].ann_ids and len(ds.records[0].ann_ids) == 2
