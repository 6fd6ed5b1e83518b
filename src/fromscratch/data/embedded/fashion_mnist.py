"""`fashion-mnist`: 70k real product photos (28x28 grey), 10 classes, from Debian's
``dataset-fashion-mnist`` package (Xiao, Rasul, Vollgraf 2017; Zalando Research).

The train split (60k) is the classification source of the pre-training stage; the test split (10k)
is reserved for composing `fashion-scenes`, so no pre-training image ever appears in a detection set.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from fromscratch.errors import DataError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def source_dir() -> Path:
    d = Path(os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR))
    if not d.is_dir():
        raise DataError(f"Fashion-MNIST not found at {d}: install it with `apt-get install dataset-fashion-mnist` "
                        "(Debian), or set FASHION_MNIST_DIR to a folder with the four IDX files")
    return d


def read_idx(path: Path) -> np.ndarray:
    """IDX format (LeCun's MNIST files), gzip or not."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists():
            raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
            break
    else:
        raise DataError(f"{path}(.gz): Fashion-MNIST file not found")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} bytes for shape {dims})")
    return data.reshape(dims)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of ``train`` or ``test``."""
    d = source_dir()
    img_name, lbl_name = FILES[split]
    images, labels = read_idx(d / img_name), read_idx(d / lbl_name)
    if len(images) != len(labels):
        raise DataError(f"{d}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


def prepare_fashion_mnist(out_dir: Path) -> dict[str, int]:
    """Write ``train.npz`` and ``test.npz`` (images, labels) and ``classes.json`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in FILES:
        images, labels = load_split(split)
        np.savez(out_dir / f"{split}.npz", images=images, labels=labels)
        counts[split] = int(len(images))
    (out_dir / "classes.json").write_text(json.dumps(CLASSES))
    return counts
