"""Segmentation encodings (COCO polygons, compressed and uncompressed RLE) through pycocotools."""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def to_rle(seg: Any, height: int, width: int) -> dict:
    """Any COCO segmentation -> compressed RLE (the three forms of the COCO format)."""
    if isinstance(seg, list):  # polygons
        rles = mask_utils.frPyObjects(seg, height, width)
        return mask_utils.merge(rles)
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    return seg  # compressed RLE


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(to_rle(seg, height, width)).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> compressed RLE with a str ``counts`` (json-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
