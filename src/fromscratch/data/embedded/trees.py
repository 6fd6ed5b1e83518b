"""`trees`: real NEON aerial photographs with hand-drawn tree-crown boxes, from DeepForest's wheel.

Source: the ``deepforest/data/`` folder of the ``deepforest==2.1.0`` wheel on PyPI (images from the
National Ecological Observatory Network, NEON; annotations by the DeepForest authors, Weinstein et
al.). The wheel is fetched with ``pip download --no-deps`` and read as a zip; it is never installed.

Every annotated image is cut into a grid of non-overlapping 400 px tiles (edge tiles keep their
smaller size; slivers under 128 px are dropped). A crown cut by a tile border is kept, clipped, when
at least half of it lies in the tile. Split: the tiles of the bottom two tile rows of the largest
image (YELL ..._crop2, y >= 1600) and the whole SOAP_061 image are ``val``; all others are ``train``.
No pixel is in both splits.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fromscratch.data.coco import write_coco
from fromscratch.data.records import Dataset, Record
from fromscratch.data.validate import Problem, format_problems
from fromscratch.data.voc import VocAnnotation, parse_voc_xml
from fromscratch.errors import DataError

WHEEL = "deepforest-2.1.0-py3-none-any.whl"
TILE = 400
MIN_TILE = 128
VAL_RULES = {"2019_YELL_2_528000_4978000_image_crop2": 1600, "SOAP_061": 0}  # image stem -> val from y


def find_wheel(cache: Path) -> Path:
    """The wheel in ``cache`` (or $DEEPFOREST_WHEEL); otherwise ``pip download`` it from PyPI."""
    import os

    if os.environ.get("DEEPFOREST_WHEEL"):
        return Path(os.environ["DEEPFOREST_WHEEL"])
    path = cache / WHEEL
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "deepforest==2.1.0", "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        raise DataError(f"could not fetch the deepforest wheel with `{' '.join(cmd)}`:\n{proc.stderr[-2000:]}\n"
                        "Download it yourself and set DEEPFOREST_WHEEL=/path/to/" + WHEEL)
    return path


def read_annotated_images(wheel: Path) -> list[tuple[VocAnnotation, np.ndarray]]:
    """Every (annotation, RGB image) pair in the wheel's data folder, parsed with our VOC reader."""
    out = []
    problems: list[Problem] = []
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        names = set(z.namelist())
        for name in sorted(n for n in names if n.startswith("deepforest/data/") and n.endswith(".xml")):
            xml_path = Path(tmp) / Path(name).name
            xml_path.write_bytes(z.read(name))
            ann = parse_voc_xml(xml_path, problems)
            if ann is None:
                continue
            stem = Path(ann.filename).stem
            img_name = next((f"deepforest/data/{stem}{ext}" for ext in (".png", ".tif", ".jpg")
                             if f"deepforest/data/{stem}{ext}" in names), None)
            if img_name is None:
                problems.append(Problem(f"{wheel}:{name}", None, "filename", f"no image for {ann.filename}"))
                continue
            image = np.asarray(Image.open(io.BytesIO(z.read(img_name))).convert("RGB"))
            out.append((ann, image))
    if problems:
        raise DataError(f"the deepforest wheel's annotations do not parse:\n{format_problems(problems)}")
    return out


def _starts(length: int) -> list[int]:
    return [s for s in range(0, length, TILE) if min(TILE, length - s) >= MIN_TILE]


def tile(ann: VocAnnotation, image: np.ndarray) -> list[tuple[str, int, int, np.ndarray, np.ndarray]]:
    """(tile name, x0, y0, tile pixels, clipped boxes) for the non-overlapping grid."""
    h, w = image.shape[:2]
    stem = Path(ann.filename).stem
    tiles = []
    for y0 in _starts(h):
        for x0 in _starts(w):
            x1, y1 = min(x0 + TILE, w), min(y0 + TILE, h)
            b = ann.boxes.copy()
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            b[:, [0, 2]] = b[:, [0, 2]].clip(x0, x1) - x0
            b[:, [1, 3]] = b[:, [1, 3]].clip(y0, y1) - y0
            bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            keep = (bw * bh >= 0.5 * area) & (bw >= 2) & (bh >= 2)
            tiles.append((f"{stem}_x{x0}_y{y0}.png", x0, y0, image[y0:y1, x0:x1], b[keep]))
    return tiles


def is_val(stem: str, y0: int) -> bool:
    return stem in VAL_RULES and y0 >= VAL_RULES[stem]


def prepare_trees(out_dir: Path, cache: Path) -> dict[str, dict[str, int]]:
    """Write ``images/``, ``train.json`` and ``val.json`` under ``out_dir``; returns counts per split."""
    wheel = find_wheel(cache)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[Record]] = {"train": [], "val": []}
    for ann, image in read_annotated_images(wheel):
        stem = Path(ann.filename).stem
        for name, x0, y0, pixels, boxes in tile(ann, image):
            Image.fromarray(pixels).save(out_dir / "images" / name)
            split = "val" if is_val(stem, y0) else "train"
            n = len(boxes)
            splits[split].append(Record(
                image_id=0, file_name=str(out_dir / "images" / name), width=pixels.shape[1],
                height=pixels.shape[0], boxes=boxes.astype(np.float32), labels=np.ones(n, dtype=np.int64),
                iscrowd=np.zeros(n, dtype=bool), file_ref=f"images/{name}"))
    cats = [{"id": 1, "name": "Tree"}]
    counts = {}
    next_image, next_ann = 1, 1
    for split, recs in splits.items():
        for r in recs:
            r.image_id, next_image = next_image, next_image + 1
            r.ann_ids = list(range(next_ann, next_ann + r.num_instances))
            next_ann += r.num_instances
        info = {"info": {"description": "NEON aerial tree crowns (DeepForest wheel data), 400 px tiles",
                         "contributor": "NEON; Weinstein et al., DeepForest"}}
        write_coco(Dataset(recs, cats, info=info), out_dir / f"{split}.json")
        counts[split] = {"images": len(recs), "boxes": sum(r.num_instances for r in recs)}
    return counts
