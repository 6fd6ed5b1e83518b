"""The one builder of datasets and loaders from a config's ``data`` section.

Training, ``eval``, ``schedule``, the study (its subsets and its plan) and the benchmarks all come
here, so they read the same files with the same checks (``image_root``, ``format``, ``on_invalid``,
``check_images``) and count the same training images: with ``data.on_invalid=skip`` the images a
study plans for are the images a run trains on.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from fromscratch.config import Config, DataConfig, has_masks
from fromscratch.data.loader import train_loader
from fromscratch.data.records import Dataset
from fromscratch.data.sources import load_dataset, load_sources
from fromscratch.data.transforms import LSJTransform, TrainTransform, keypoint_flip_map, resized_shape
from fromscratch.errors import ConfigError


def _common(d: DataConfig, check_images: bool | None) -> dict[str, Any]:
    return dict(fmt=d.format, image_root=d.image_root, on_invalid=d.on_invalid,
                check_images=d.check_images if check_images is None else check_images,
                allow_outside_root=d.allow_outside_root)


def build_dataset(d: DataConfig, split: Literal["train", "val"], check_images: bool | None = None,
                  subset: bool = True) -> Dataset:
    """``data.train`` (its sources concatenated, restricted to ``data.subset`` unless ``subset=False``)
    or ``data.val``, checked. ``check_images`` overrides ``data.check_images`` (False: no image opened)."""
    if split == "train":
        if not d.train:
            raise ConfigError("data.train is not set: give a COCO json or VOC folder")
        ds = load_sources(d.train, subset=d.subset if subset else None, **_common(d, check_images))
        if d.augmentation == "lsj_copypaste":
            check_copy_paste(d, ds)
    else:
        if not d.val:
            raise ConfigError("data.val is not set: nothing to evaluate on")
        ds = load_dataset(d.val, **_common(d, check_images))
    return ds.packed() if d.pack_records else ds


def check_copy_paste(d: DataConfig, ds: Dataset) -> None:
    """Copy-Paste cuts objects out by their masks: refuse a training set with none (boxes only: VOC, a
    COCO json without segmentations) now, not as a loader that silently pastes nothing."""
    if any(r.segmentations is not None and any(seg is not None for seg in r.segmentations) for r in ds.records):
        return
    raise ConfigError(f"data.augmentation='lsj_copypaste': Copy-Paste pastes objects by their segmentation "
                      f"masks, and data.train ({d.train}) has none (boxes only). Use data.augmentation=lsj "
                      "(large-scale jitter without Copy-Paste), or a training set with segmentations.")


def build_datasets(d: DataConfig) -> tuple[Dataset, Dataset | None]:
    """(training set, validation set or None): every check runs here, before any model is built."""
    return build_dataset(d, "train"), (build_dataset(d, "val") if d.val else None)


def train_image_ids(d: DataConfig) -> list[int]:
    """The ids of the training images a run on the whole of ``data.train`` would use (the same checks,
    so ``on_invalid=skip`` drops the same images; no subset): what a study draws its subsets from."""
    ds = build_dataset(d, "train", subset=False)
    ids = getattr(ds.records, "image_ids", None)  # packed records keep them as an array: no unpickling
    return [int(i) for i in ids] if ids is not None else [r.image_id for r in ds.records]


def build_train_loader(cfg: Config, ds: Dataset, start_iter: int, max_iter: int, rank: int = 0,
                       world_size: int = 1, num_workers: int | None = None) -> torch.utils.data.DataLoader:
    """The training loader of ``cfg``: this rank's share of the batch of every iteration in
    [start_iter, max_iter), augmented as ``data`` says (a function of (seed, iteration): exact resume)."""
    d, t = cfg.data, cfg.train
    flip_map = keypoint_flip_map(ds.keypoint_names) if ds.keypoint_names else None
    # LSJ makes every image one square canvas: grouping by the original orientation pads nothing away
    # and would only restrict which images share a batch
    return train_loader(ds, build_transform(d, flip_map), t.batch_size, t.seed, start_iter, max_iter,
                        with_masks=has_masks(cfg.model.meta_arch), with_keypoints=cfg.model.meta_arch == "keypoint_rcnn",
                        num_workers=d.num_workers if num_workers is None else num_workers,
                        group=d.aspect_ratio_grouping and d.augmentation == "standard", rank=rank,
                        world_size=world_size)


def build_transform(d: DataConfig, flip_map: list[int] | None = None) -> TrainTransform | LSJTransform:
    """The training augmentation ``data.augmentation`` names (data/transforms.py)."""
    if d.augmentation == "standard":
        return TrainTransform(d.train_scales, d.scale_sampling, d.max_size, d.flip_prob, flip_map)
    return LSJTransform(d.lsj_size, (d.lsj_scale[0], d.lsj_scale[1]), d.flip_prob, flip_map,
                        d.copy_paste_prob if d.augmentation == "lsj_copypaste" else 0.0, d.lsj_pad_value)


def train_stats(d: DataConfig) -> tuple[int, float, float]:
    """(training images, mean pixels of a resized image, instances per image) for ``fromscratch
    schedule``: the training set as a run would load it."""
    ds = build_dataset(d, "train")
    short = int(np.mean(d.train_scales))
    if d.augmentation != "standard":  # LSJ: every training image is the lsj_size x lsj_size canvas
        px = [d.lsj_size ** 2] * len(ds.records)
    else:
        px = [np.prod(resized_shape(r.height, r.width, short, d.max_size)[:2]) for r in ds.records]
    return len(ds.records), float(np.mean(px)) if px else 0.0, ds.num_instances() / max(1, len(ds.records))
