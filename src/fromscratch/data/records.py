"""The in-memory form every reader produces (COCO json, VOC XML) and every stage consumes.

Boxes are float32 xyxy in pixels; labels are contiguous 1..C (0 is torchvision's background) with
the original category ids kept in ``Dataset.label_to_cat_id`` so results are written back in the
file's own ids. Masks stay as COCO polygons/RLE and are decoded only when asked for (a COCO image
with 50 instances at 800x1333 is 50 MB of masks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Record:
    image_id: int
    file_name: str  # absolute path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, xyxy
    labels: np.ndarray  # (N,) int64, contiguous 1..C
    iscrowd: np.ndarray  # (N,) bool
    ann_ids: list[int] = field(default_factory=list)
    segmentations: list[Any] | None = None  # per annotation: polygon list or RLE dict
    keypoints: np.ndarray | None = None  # (N, K, 3) float32: x, y, visibility
    difficult: np.ndarray | None = None  # (N,) bool, VOC only
    file_ref: str = ""  # the file name as written in the source (relative to image_root)

    @property
    def num_instances(self) -> int:
        return int(len(self.boxes))

    def masks(self) -> np.ndarray:
        """Decode every segmentation to a (N, H, W) uint8 array (pycocotools, as COCO's own API)."""
        from fromscratch.data.masks import decode_segmentation

        if self.segmentations is None:
            raise ValueError(f"image {self.image_id} has no segmentations")
        out = np.zeros((self.num_instances, self.height, self.width), dtype=np.uint8)
        for i, seg in enumerate(self.segmentations):
            if seg is not None:
                out[i] = decode_segmentation(seg, self.height, self.width)
        return out


@dataclass
class Dataset:
    records: list[Record]
    categories: list[dict]  # COCO category dicts, in label order (label i+1 = categories[i])
    source: str = ""
    image_root: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}

    @property
    def class_names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    @property
    def has_masks(self) -> bool:
        return any(r.segmentations is not None and any(s is not None for s in r.segmentations) for r in self.records)

    @property
    def has_keypoints(self) -> bool:
        return any(r.keypoints is not None for r in self.records)

    @property
    def keypoint_names(self) -> list[str]:
        for c in self.categories:
            if c.get("keypoints"):
                return list(c["keypoints"])
        return []

    def num_instances(self) -> int:
        return sum(int((~r.iscrowd).sum()) for r in self.records)

    def subset(self, image_ids: list[int] | set[int]) -> "Dataset":
        keep = set(int(i) for i in image_ids)
        recs = [r for r in self.records if r.image_id in keep]
        return Dataset(recs, self.categories, self.source, self.image_root, self.info)
