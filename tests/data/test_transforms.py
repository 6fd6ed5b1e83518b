import numpy as np

from fromscratch.data.transforms import (
    Sample,
    TrainTransform,
    hflip,
    keypoint_flip_map,
    resize,
    resized_shape,
    sample_short_side,
)


def _sample():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[10:20, 5:15] = 255
    mask = np.zeros((1, 40, 60), dtype=np.uint8)
    mask[0, 10:20, 5:15] = 1
    kps = np.array([[[6, 11, 2], [14, 19, 2], [0, 0, 0]]], dtype=np.float32)
    return Sample(img, np.array([[5, 10, 15, 20]], np.float32), np.array([1]), np.array([False]), mask, kps)


def _mask_box(m):
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_flip_keeps_box_mask_keypoints_together():
    s = hflip(_sample(), keypoint_flip_map(["left_eye", "right_eye", "nose"]))
    assert s.boxes[0].tolist() == [45, 10, 55, 20]
    assert _mask_box(s.masks[0]) == [45, 10, 55, 20]
    assert _mask_box(s.image[..., 0] > 0) == [45, 10, 55, 20]
    # left/right swapped, x mirrored; the invisible keypoint stays (0, 0, 0)
    assert s.keypoints[0].tolist() == [[46, 19, 2], [54, 11, 2], [0, 0, 0]]


def test_double_flip_is_identity():
    a = _sample()
    b = hflip(hflip(a, [1, 0, 2]), [1, 0, 2])
    assert (a.image == b.image).all() and (a.masks == b.masks).all()
    np.testing.assert_allclose(a.boxes, b.boxes)
    np.testing.assert_allclose(a.keypoints, b.keypoints)


def test_resize_short_side_and_max_size():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067, 800 / 480)
    h, w, _ = resized_shape(100, 1000, 800, 1333)  # long side capped
    assert w == 1333 and h == 133
    s = resize(_sample(), 80, 1333)
    assert s.image.shape == (80, 120, 3) and s.masks.shape == (1, 80, 120)
    assert s.boxes[0].tolist() == [10, 20, 30, 40]
    assert _mask_box(s.masks[0]) == [10, 20, 30, 40]
    assert s.keypoints[0, 0, :2].tolist() == [12, 22]


def test_scale_sampling():
    rng = np.random.default_rng(0)
    got = {sample_short_side([640, 800], "range", rng) for _ in range(300)}
    assert min(got) >= 640 and max(got) <= 800 and len(got) > 50
    assert {sample_short_side([640, 800], "choice", rng) for _ in range(50)} == {640, 800}


def test_train_transform_is_seeded():
    t = TrainTransform([20, 30, 40], "choice", 1333, 0.5)
    a = t(_sample(), np.random.default_rng(5))
    b = t(_sample(), np.random.default_rng(5))
    assert a.image.shape == b.image.shape and (a.boxes == b.boxes).all()
