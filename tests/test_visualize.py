"""Drawing on a small fixture, `data show`, and `predict` skipping an unreadable file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fromscratch.cli import main
from fromscratch.visualize import MASK_ALPHA, colour, draw


def test_box_border_and_mask_tint_and_empty():
    img = np.full((40, 50, 3), 100, dtype=np.uint8)
    mask = np.zeros((1, 40, 50), dtype=np.uint8)
    mask[0, 20:30, 25:35] = 1
    out = draw(img, np.array([[10.0, 10, 40, 35]]), [1], ["thing"], masks=mask)
    assert (out[10, 20] != 100).any() and (out[22, 10] != 100).any()  # the border changed
    assert (out[5, 5] == 100).all() and (out[15, 45] == 100).all()  # outside: untouched
    expected = np.round(100 * (1 - MASK_ALPHA) + np.array(colour(0)) * MASK_ALPHA)
    assert np.allclose(out[25, 30], expected, atol=1)  # the mask region is tinted
    assert (out[22, 15] == 100).all()  # inside the box, outside the mask: untouched
    empty = draw(img, np.zeros((0, 4)), [], ["thing"], scores=[], masks=np.zeros((0, 40, 50), np.uint8))
    assert (empty == img).all()  # nothing drawn for an empty prediction


def test_keypoints_and_crowd_are_drawn():
    img = np.zeros((30, 30, 3), dtype=np.uint8)
    kps = np.array([[[5, 5, 2], [20, 20, 2], [0, 0, 0]]], dtype=np.float32)
    out = draw(img, np.array([[2.0, 2, 25, 25]]), [1], keypoints=kps, skeleton=[[1, 2]], crowd=[True])
    assert out[12, 12].any()  # the skeleton line between the two visible keypoints
    assert (out[2, 10] == 160).all()  # crowd boxes in grey


def test_data_show(tmp_path, coco_path):
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(coco_path), "--n", "3", "--cols", "3", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 256, 256)


@pytest.mark.slow
def test_predict_skips_unreadable_file(tmp_path, capsys):
    from fromscratch.config import load_config
    from fromscratch.models.build import build_model

    cfg = load_config("configs/models/cpu.yaml", ["data.test_scale=64", "data.max_size=96"])
    torch.save({"model": build_model(cfg, 3).state_dict()}, tmp_path / "w.pth")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    rc = main(["predict", "configs/models/cpu.yaml", str(folder), "--weights", str(tmp_path / "w.pth"), "--out",
               str(tmp_path / "out"), "--score-thresh", "0.0", "--set", "data.test_scale=64", "data.max_size=96"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.jpg" in out
    assert Image.open(tmp_path / "out" / "ok.png").size == (70, 50)
    assert json.loads((tmp_path / "out" / "images.json").read_text())["images"][0]["file_name"].endswith("ok.png")
    assert isinstance(json.loads((tmp_path / "out" / "detections.json").read_text()), list)
