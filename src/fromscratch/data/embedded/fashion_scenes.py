"""`fashion-scenes`: instance-segmentation scenes composed from Fashion-MNIST *test* items on real
aerial photographs (the `trees` source images), with exact masks.

Why: a COCO-like task (several classes, masks, occlusion, scale variation) that runs in CPU minutes,
whose objects were never seen by the pre-training stage (that uses the Fashion-MNIST *train* split).
Each item's mask is its non-dark pixels (the background of Fashion-MNIST is black); items are scaled,
tinted and pasted in order, later ones occluding earlier ones; masks and boxes are what stays visible,
and an item with less than ``MIN_VISIBLE`` of itself visible is dropped. Each item also has 4
keypoints, the extreme points of its visible mask (left, right, top, bottom), for Keypoint R-CNN. Train scenes draw from test
items 0-4999, val scenes from 5000-9999. Everything is a function of the seed: same seed, same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fromscratch.data.coco import write_coco
from fromscratch.data.embedded.fashion_mnist import CLASSES, load_split
from fromscratch.data.masks import encode_mask
from fromscratch.data.records import Dataset, Record

MASK_THRESHOLD = 12  # grey level above which a Fashion-MNIST pixel belongs to the item
MIN_VISIBLE = 0.4
# keypoints: the extreme points of each item's visible mask (a well-defined, learnable keypoint task)
KEYPOINTS = ["left", "right", "top", "bottom"]
SKELETON = [[1, 3], [3, 2], [2, 4], [4, 1]]


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """(4, 3) keypoints (x, y, v=2) at the left-, right-, top- and bottom-most visible pixels."""
    ys, xs = np.nonzero(mask)
    out = []
    for sel in (xs == xs.min(), xs == xs.max(), ys == ys.min(), ys == ys.max()):
        out.append([float(np.median(xs[sel])) + 0.5, float(np.median(ys[sel])) + 0.5, 2.0])
    return np.asarray(out, dtype=np.float32)


def backgrounds(cache: Path) -> list[np.ndarray]:
    from fromscratch.data.embedded.trees import find_wheel, read_annotated_images

    return [img for _, img in read_annotated_images(find_wheel(cache))]


def _background(bgs: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    src = bgs[int(rng.integers(len(bgs)))]
    h, w = src.shape[:2]
    crop = int(rng.integers(min(size, h, w) // 2, min(h, w, 2 * size) + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = Image.fromarray(src[y:y + crop, x:x + crop]).resize((size, size), Image.BILINEAR)
    return np.asarray(patch).copy()


def compose_scene(items: np.ndarray, labels: np.ndarray, bgs: list[np.ndarray], size: int,
                  rng: np.random.Generator, max_items: int = 6) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: the image and the visible (label, mask) of every kept item."""
    image = _background(bgs, size, rng)
    placed: list[tuple[int, np.ndarray, int]] = []  # label, visible mask, full area
    for _ in range(int(rng.integers(2, max_items + 1))):
        k = int(rng.integers(len(items)))
        side = int(rng.integers(max(12, size // 8), size // 2 + 1))
        grey = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR))
        mask_small = grey > MASK_THRESHOLD
        if mask_small.sum() < 16:
            continue
        y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        colour = rng.uniform(0.35, 1.0, size=3)
        tinted = (grey[..., None].astype(np.float32) * colour).clip(0, 255).astype(np.uint8)
        full = np.zeros((size, size), dtype=bool)
        full[y:y + side, x:x + side] = mask_small
        region = image[y:y + side, x:x + side]
        region[mask_small] = tinted[mask_small]
        for j, (lab, m, area) in enumerate(placed):
            placed[j] = (lab, m & ~full, area)
        placed.append((int(labels[k]) + 1, full, int(full.sum())))
    kept = [(lab, m) for lab, m, area in placed if m.sum() >= MIN_VISIBLE * area and m.sum() >= 9]
    return image, kept


def _record(image_id: int, rel: str, path: Path, size: int, kept: list[tuple[int, np.ndarray]],
            first_ann: int) -> Record:
    boxes, segs = [], []
    for _, m in kept:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        segs.append(encode_mask(m))
    n = len(kept)
    kps = np.stack([extreme_points(m) for _, m in kept]) if kept else np.zeros((0, len(KEYPOINTS), 3), np.float32)
    return Record(image_id=image_id, file_name=str(path), width=size, height=size,
                  boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                  labels=np.asarray([lab for lab, _ in kept], dtype=np.int64), iscrowd=np.zeros(n, dtype=bool),
                  ann_ids=list(range(first_ann, first_ann + n)), segmentations=segs, keypoints=kps, file_ref=rel)


def prepare_fashion_scenes(out_dir: Path, cache: Path, num_train: int = 1000, num_val: int = 200,
                           image_size: int = 256, seed: int = 0) -> dict[str, dict[str, int]]:
    items, labels = load_split("test")
    bgs = backgrounds(cache)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n, "keypoints": KEYPOINTS, "skeleton": SKELETON} for i, n in enumerate(CLASSES)]
    counts = {}
    image_id, ann_id = 1, 1
    for split, n, lo, hi in (("train", num_train, 0, 5000), ("val", num_val, 5000, 10000)):
        recs = []
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            image, kept = compose_scene(items[lo:hi], labels[lo:hi], bgs, image_size, rng)
            rel = f"images/{split}_{i:06d}.png"
            Image.fromarray(image).save(out_dir / rel)
            recs.append(_record(image_id, rel, out_dir / rel, image_size, kept, ann_id))
            image_id, ann_id = image_id + 1, ann_id + len(kept)
        info = {"info": {"description": f"fashion-scenes seed={seed} size={image_size}: Fashion-MNIST test items "
                                        "on NEON aerial photographs"}}
        write_coco(Dataset(recs, cats, info=info), out_dir / f"{split}.json")
        counts[split] = {"images": n, "instances": sum(r.num_instances for r in recs)}
    return counts
