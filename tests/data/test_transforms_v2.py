"""The v2 transforms (data/transforms.py): resize close to PIL's, box = mask box and visible keypoints
inside after every augmentation, large-scale jitter's fixed canvas and consistent drops, Copy-Paste's
pixels, masks and keypoints, batches a function of (seed, iteration) with any workers and on resume,
and Copy-Paste refused on box-only data."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.data.build import build_dataset, build_train_loader, build_transform
from fromscratch.data.coco import load_coco
from fromscratch.data.loader import record_sample
from fromscratch.data.transforms import (
    COPY_PASTE_MIN_PIXELS,
    LSJTransform,
    Sample,
    copy_paste,
    crop_pad,
    keypoint_flip_map,
    lsj,
    mask_boxes,
    resize,
)
from fromscratch.errors import ConfigError
from tests.conftest import ROOT, make_coco, prepared


@pytest.fixture(scope="module")
def scenes():
    return load_coco(prepared("fashion-scenes"), check_images=False)


def _check(s: Sample, tol: float = 1.0):
    """Every field has one entry per instance; every box is its mask's tight box (within tol) and holds
    its visible keypoints, which lie in the image. The keypoints get half a pixel more slack: a box is
    its mask's, quantized to the pixel grid at the new scale, and fashion-scenes' keypoints sit on the
    object's edge (x.5 on a box edge)."""
    n = len(s.boxes)
    assert len(s.labels) == len(s.iscrowd) == n
    h, w = s.image.shape[:2]
    if s.masks is not None:
        assert s.masks.shape == (n, h, w)
        tight = mask_boxes(torch.from_numpy(s.masks)).numpy()
        assert (tight[:, 2] > tight[:, 0]).all()  # no empty mask kept
        np.testing.assert_allclose(s.boxes, tight, atol=tol)
    if s.keypoints is not None:
        assert s.keypoints.shape[0] == n
        k, b = s.keypoints, s.boxes[:, None, :]
        vis = k[..., 2] > 0
        assert (k[~vis] == 0).all()  # invisible keypoints are (0, 0, 0)
        x, y = k[..., 0][vis], k[..., 1][vis]
        assert (x >= 0).all() and (x <= w).all() and (y >= 0).all() and (y <= h).all()
        slack = tol + 0.5
        inside = ((k[..., 0] >= b[..., 0] - slack) & (k[..., 0] <= b[..., 2] + slack) &
                  (k[..., 1] >= b[..., 1] - slack) & (k[..., 1] <= b[..., 3] + slack))
        assert inside[vis].all()


def test_resize_is_close_to_pil_on_a_real_image(scenes):
    """The old transforms resized with PIL (bilinear image, nearest masks); v2's bilinear with antialias
    and nearest-exact stay within 2 grey levels and a few mask pixels of it, up and down."""
    r = scenes.records[0]
    s = record_sample(r, True, True)
    for short in (800, 128):
        out = resize(s, short, 1333)
        h, w = out.image.shape[:2]
        pil = np.asarray(Image.fromarray(s.image).resize((w, h), Image.BILINEAR)).astype(int)
        d = np.abs(out.image.astype(int) - pil)
        assert d.mean() < 0.05 and d.max() <= 2, (short, d.mean(), d.max())
        pil_masks = np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST)) for m in s.masks])
        assert (out.masks != pil_masks).mean() < 1e-3


@pytest.mark.parametrize("augmentation", ["standard", "lsj", "lsj_copypaste"])
def test_boxes_fit_masks_and_keypoints_stay_inside(scenes, augmentation):
    cfg = load_config(None, [f"data.augmentation={augmentation}", "data.lsj_size=160", "data.copy_paste_prob=1",
                             "data.train_scales=[200,400]", "data.scale_sampling=range"])
    transform = build_transform(cfg.data, keypoint_flip_map(scenes.keypoint_names))
    records = scenes.records[:12]
    for i, r in enumerate(records):
        other = records[(i + 1) % len(records)]
        out = transform(record_sample(r, True, True), np.random.default_rng(i),
                        lambda rng, other=other: record_sample(other, True, True))
        _check(out)
        if augmentation != "standard":
            assert out.image.shape == (160, 160, 3)


def test_lsj_canvas_is_exactly_the_size_at_any_scale(scenes):
    s = record_sample(scenes.records[3], True, True)
    for seed, scale in enumerate([(0.1, 0.1), (0.5, 1.5), (2.0, 2.0)]):
        out = lsj(s, 96, scale, np.random.default_rng(seed), flip_prob=0.5, flip_map=[1, 0, 2, 3])
        assert out.image.shape == (96, 96, 3) and out.masks.shape[1:] == (96, 96)
        _check(out)
    small = lsj(s, 96, (0.5, 0.5), np.random.default_rng(0))  # 256 px -> 48 px: padded bottom/right with 0
    assert (small.image[48:] == 0).all() and (small.image[:, 48:] == 0).all() and small.image[:48, :48].any()
    grey = lsj(s, 96, (0.5, 0.5), np.random.default_rng(0), pad_value=128)  # detectron2's padding
    assert (grey.image[48:] == 128).all() and (grey.image[:48, :48] == small.image[:48, :48]).all()
    assert (grey.masks[:, 48:] == 0).all() and (grey.boxes == small.boxes).all()


def _corners() -> Sample:
    """100 x 100: four 20 px squares in the corners (labels 1-4) and one straddling (40:60, 50:70,
    label 5); one keypoint at each square's centre and one at its top-left pixel."""
    img = np.zeros((100, 100, 3), np.uint8)
    spans = [(0, 0), (0, 80), (80, 0), (80, 80)]
    rects = [(y, x, y + 20, x + 20) for y, x in spans] + [(40, 50, 60, 70)]
    masks = np.zeros((5, 100, 100), np.uint8)
    kps = np.zeros((5, 2, 3), np.float32)
    for i, (y0, x0, y1, x1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
        img[y0:y1, x0:x1] = 40 * (i + 1)
        kps[i] = [[(x0 + x1) / 2, (y0 + y1) / 2, 2], [x0 + 0.5, y0 + 0.5, 2]]
    boxes = np.array([[x0, y0, x1, y1] for y0, x0, y1, x1 in rects], np.float32)
    return Sample(img, boxes, np.arange(1, 6), np.zeros(5, bool), masks, kps)


def test_crop_drops_instances_consistently():
    out = crop_pad(_corners(), top=50, left=0, size=60)  # rows 50:100, cols 0:60, then 10 rows of padding
    assert out.image.shape == (60, 60, 3) and (out.image[50:] == 0).all()
    assert out.labels.tolist() == [3, 5]  # bottom-left square whole, the straddling one clipped
    assert out.iscrowd.tolist() == [False, False]
    assert out.boxes.tolist() == [[0, 30, 20, 50], [50, 0, 60, 10]]
    assert out.masks.shape == (2, 60, 60)
    assert mask_boxes(torch.from_numpy(out.masks)).tolist() == out.boxes.tolist()
    # the clipped square's centre (60, 50) -> (60, 0) is on the window's edge: kept; its corner (50.5, 40.5)
    # is above the window: hidden
    assert out.keypoints.tolist() == [[[10, 40, 2], [0.5, 30.5, 2]], [[60, 0, 2], [0, 0, 0]]]
    assert (out.image[out.masks[0] > 0] == 120).all() and (out.image[out.masks[1] > 0] == 200).all()
    _check(out, tol=0)


def test_lsj_drops_consistently_at_random_offsets():
    s = _corners()
    for seed in range(8):
        out = lsj(s, 100, (2.0, 2.0), np.random.default_rng(seed), flip_prob=0.5)
        assert 1 <= len(out.labels) < 5  # a 2x zoom keeps a quarter of the image: never all, never none
        _check(out)
        for j, label in enumerate(out.labels):  # each kept mask covers its own colour (inside: edges blend)
            m = out.masks[j] > 0
            inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            assert (out.image[1:-1, 1:-1][inner] == 40 * label).all()


def _pair():
    """A 64 x 64 target with a big square (label 1), a small one (2) and a tiny one (3, 12 px), and a
    source whose single object (label 9) covers the big square's left half and 9 of the tiny one's pixels."""
    img = np.full((64, 64, 3), 50, np.uint8)
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[1, 40:50, 40:50] = 1
    masks[2, 2:5, 50:54] = 1
    kps = np.array([[[12, 12, 2], [25, 25, 2]], [[45, 45, 2], [0, 0, 0]], [[51, 3, 1], [0, 0, 0]]], np.float32)
    target = Sample(img, np.array([[10, 10, 30, 30], [40, 40, 50, 50], [50, 2, 54, 5]], np.float32),
                    np.array([1, 2, 3]), np.zeros(3, bool), masks, kps)
    simg = np.full((64, 64, 3), 200, np.uint8)
    smask = np.zeros((1, 64, 64), np.uint8)
    smask[0, 0:40, 0:20] = 1
    smask[0, 0:5, 51:64] = 1
    source = Sample(simg, np.array([[0, 0, 64, 40]], np.float32), np.array([9]), np.zeros(1, bool), smask,
                    np.array([[[5, 5, 2], [60, 2, 2]]], np.float32))
    return target, source


def test_copy_paste_pastes_pixels_and_occludes_the_target():
    target, source = _pair()
    out = copy_paste(target, source, np.random.default_rng(0))
    alpha = source.masks[0] > 0
    assert (out.image[alpha] == source.image[alpha]).all() and (out.image[~alpha] == target.image[~alpha]).all()
    # the tiny square keeps 3 of its 12 pixels (< COPY_PASTE_MIN_PIXELS): dropped; the pasted object comes last
    assert COPY_PASTE_MIN_PIXELS > 3 and out.labels.tolist() == [1, 2, 9] and out.iscrowd.tolist() == [False] * 3
    assert (out.masks[0] == (target.masks[0] & ~alpha)).all() and out.masks[0].sum() < target.masks[0].sum()
    assert out.boxes[0].tolist() == [20, 10, 30, 30]  # recomputed from what is left
    assert out.boxes[1].tolist() == [40, 40, 50, 50] and (out.masks[1] == target.masks[1]).all()  # untouched
    assert (out.masks[2] == source.masks[0]).all() and out.boxes[2].tolist() == [0, 0, 64, 40]
    # the big square's keypoint under the paste is hidden, the other kept; the pasted object's come along
    assert out.keypoints.tolist() == [[[0, 0, 0], [25, 25, 2]], [[45, 45, 2], [0, 0, 0]], [[5, 5, 2], [60, 2, 2]]]
    _check(out, tol=0)


def test_copy_paste_adds_instances_on_a_seeded_case(scenes):
    """lsj_copypaste with probability 1 on fashion-scenes: the source's objects join the target's."""
    t = LSJTransform(128, (0.8, 1.2), 0.5, keypoint_flip_map(scenes.keypoint_names), copy_paste_prob=1.0)
    plain = LSJTransform(128, (0.8, 1.2), 0.5, keypoint_flip_map(scenes.keypoint_names))
    records = scenes.records
    more = 0
    for i in range(6):
        s, src = record_sample(records[i], True, True), record_sample(records[i + 100], True, True)
        a = plain(s, np.random.default_rng(i))
        b = t(s, np.random.default_rng(i), lambda rng, src=src: src)  # the same draws first: the same LSJ
        _check(b)
        more += len(b.labels) > len(a.labels)
    assert more >= 4


def _cfg(tmp_path, *extra):
    return load_config(ROOT / "configs/models/cpu.yaml", [
        f"data.train={prepared('fashion-scenes')}", "data.check_images=false", "data.augmentation=lsj_copypaste",
        "data.lsj_size=96", "data.copy_paste_prob=0.7", "train.batch_size=2", f"output_dir={tmp_path}", *extra])


def _same(a, b):
    (ia, ta), (ib, tb) = a, b
    assert len(ia) == len(ib) and all(torch.equal(x, y) for x, y in zip(ia, ib))
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys() and x["image_id"] == y["image_id"]
        assert all(torch.equal(x[k], y[k]) for k in x if k != "image_id")


def test_batches_are_a_function_of_seed_and_iteration(tmp_path):
    """Same (seed, iteration) -> identical batch with 0 or 2 workers, and a loader resumed at k yields
    the batches a run from 0 saw at k and after (Copy-Paste's source draw included)."""
    cfg = _cfg(tmp_path, "model.meta_arch=keypoint_rcnn")
    ds = build_dataset(cfg.data, "train")
    whole = list(build_train_loader(cfg, ds, 0, 5, num_workers=0))
    for batch in whole:
        assert all(img.shape == (3, 96, 96) for img in batch[0])
        assert all("masks" not in t and t["keypoints"].shape[1:] == (4, 3) for t in batch[1])
    for a, b in zip(whole, build_train_loader(cfg, ds, 0, 5, num_workers=2)):
        _same(a, b)
    resumed = list(build_train_loader(cfg, ds, 3, 5, num_workers=0))
    assert len(resumed) == 2
    for a, b in zip(whole[3:], resumed):
        _same(a, b)
    other_seed = list(build_train_loader(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 1})}),
                                         ds, 0, 1, num_workers=0))
    assert not all(torch.equal(x, y) for x, y in zip(whole[0][0], other_seed[0][0]))
    # LSJ alone makes the same draws up to the paste coin: the images that differ are the pasted ones
    lsj_only = cfg.model_copy(update={"data": cfg.data.model_copy(update={"augmentation": "lsj"})})
    plain = [img for batch in build_train_loader(lsj_only, ds, 0, 5, num_workers=0) for img in batch[0]]
    pasted = [not torch.equal(a, b) for a, b in zip([img for batch in whole for img in batch[0]], plain)]
    assert 3 <= sum(pasted) < len(pasted)  # copy_paste_prob 0.7 of 10 images


def _boxes_only(tmp_path):
    ann = make_coco(tmp_path, num_images=2, keypoints=False)
    d = json.loads(ann.read_text())
    for a in d["annotations"]:
        a.pop("segmentation")
    ann.write_text(json.dumps(d))
    return ann


def test_copy_paste_on_box_only_data_is_refused(tmp_path):
    ann = _boxes_only(tmp_path)
    cfg = load_config(None, [f"data.train={ann}", "data.augmentation=lsj_copypaste", "model.meta_arch=faster_rcnn"])
    refusal = r"data.augmentation='lsj_copypaste'.*masks.*boxes only.*data.augmentation=lsj"
    with pytest.raises(ConfigError, match=refusal):
        build_dataset(cfg.data, "train")
    lsj_only = load_config(None, [f"data.train={ann}", "data.augmentation=lsj", "model.meta_arch=faster_rcnn"])
    assert len(build_dataset(lsj_only.data, "train").records) == 2  # LSJ alone needs no masks


@pytest.mark.parametrize("override,key", [("data.lsj_scale=[0.1]", "data.lsj_scale"),
                                          ("data.lsj_scale=[0,2]", "data.lsj_scale"),
                                          ("data.lsj_scale=[2,1]", "data.lsj_scale"),
                                          ("data.copy_paste_prob=1.5", "data.copy_paste_prob"),
                                          ("data.lsj_pad_value=256", "data.lsj_pad_value"),
                                          ("data.lsj_size=0", "data.lsj_size"),
                                          ("data.augmentation=ssj", "data.augmentation")])
def test_lsj_keys_are_validated(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_cli_trains_two_iterations_with_lsj_copypaste(tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/models/cpu.yaml"), f"data.train={prepared('fashion-scenes')}",
                 "data.check_images=false", "data.augmentation=lsj_copypaste", "data.lsj_size=128",
                 "data.copy_paste_prob=1", "data.num_workers=0", "train.iterations=2", "train.steps=[1]",
                 "train.warmup_iters=0", f"output_dir={out}"]) == 0
    assert (out / "model_0000002.pth").exists()
