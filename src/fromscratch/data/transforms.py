"""Short-side resize, scale augmentation and horizontal flip, applied to the image, boxes, masks and
keypoints together (the paper: short side 800, max 1333, flip only; scale augmentation [640, 800]).

Training images are resized here, in the loader workers, so the model's own resize is skipped in
training (``models/build.py``); evaluation feeds original images and lets the model resize, so
detections come back in original coordinates as torchvision does it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def sample_short_side(scales: list[int], sampling: str, rng: np.random.Generator) -> int:
    """detectron2's MIN_SIZE_TRAIN_SAMPLING: "choice" from a list, or "range" = uniform in [min, max]."""
    if sampling == "range":
        if len(scales) != 2:
            raise ValueError(f"scale_sampling='range' needs [min, max], got {scales}")
        return int(rng.integers(min(scales), max(scales) + 1))
    return int(scales[int(rng.integers(len(scales)))])


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int, float]:
    """Scale so the short side is ``short`` unless the long side would pass ``max_size``."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale))), scale


def keypoint_flip_map(names: list[str]) -> list[int]:
    """Index permutation swapping ``left_*`` and ``right_*`` keypoints (COCO naming)."""
    index = {n: i for i, n in enumerate(names)}
    perm = list(range(len(names)))
    for n, i in index.items():
        for a, b in (("left_", "right_"), ("right_", "left_"), ("left", "right"), ("right", "left")):
            if n.startswith(a) and n.replace(a, b, 1) in index:
                perm[i] = index[n.replace(a, b, 1)]
                break
    return perm


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray
    iscrowd: np.ndarray
    masks: np.ndarray | None = None  # (N, H, W) uint8
    keypoints: np.ndarray | None = None  # (N, K, 3)


def resize(s: Sample, short: int, max_size: int) -> Sample:
    h, w = s.image.shape[:2]
    nh, nw, _ = resized_shape(h, w, short, max_size)
    if (nh, nw) == (h, w):
        return s
    sx, sy = nw / w, nh / h
    image = np.array(Image.fromarray(s.image).resize((nw, nh), Image.BILINEAR))
    boxes = s.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    masks = None
    if s.masks is not None:
        masks = np.stack([np.asarray(Image.fromarray(m).resize((nw, nh), Image.NEAREST)) for m in s.masks]) \
            if len(s.masks) else np.zeros((0, nh, nw), dtype=np.uint8)
    kps = None
    if s.keypoints is not None:
        kps = s.keypoints.copy()
        kps[..., 0] *= sx
        kps[..., 1] *= sy
    return Sample(image, boxes.astype(np.float32), s.labels, s.iscrowd, masks, kps)


def hflip(s: Sample, flip_map: list[int] | None = None) -> Sample:
    w = s.image.shape[1]
    image = np.ascontiguousarray(s.image[:, ::-1])
    boxes = s.boxes.copy()
    boxes[:, 0], boxes[:, 2] = w - s.boxes[:, 2], w - s.boxes[:, 0]
    masks = np.ascontiguousarray(s.masks[:, :, ::-1]) if s.masks is not None else None
    kps = None
    if s.keypoints is not None:
        kps = s.keypoints.copy()
        kps[..., 0] = np.where(kps[..., 2] > 0, w - kps[..., 0], 0)
        if flip_map is not None:
            kps = kps[:, flip_map]
    return Sample(image, boxes, s.labels, s.iscrowd, masks, kps)


@dataclass
class TrainTransform:
    scales: list[int]
    sampling: str = "choice"
    max_size: int = 1333
    flip_prob: float = 0.5
    flip_map: list[int] | None = None

    def __call__(self, s: Sample, rng: np.random.Generator) -> Sample:
        s = resize(s, sample_short_side(self.scales, self.sampling, rng), self.max_size)
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            s = hflip(s, self.flip_map)
        return s
