"""Batching with aspect-ratio grouping, distributed sharding and workers, resumable by construction.

The batch of iteration ``i`` is a pure function of (seed, i): each epoch is a seeded permutation,
grouped by aspect ratio (landscape / portrait, as torchvision's GroupedBatchSampler and detectron2's
AspectRatioGroupedDataset do), and each sample's augmentation, Copy-Paste's choice of a source image
included, is seeded by (seed, i, slot). So a run resumed at iteration i sees exactly the batches it
would have seen, whatever the number of workers, and rank r of W takes slots [r*B/W, (r+1)*B/W) of
the same global batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from fromscratch.data.records import Dataset, Record
from fromscratch.data.transforms import LSJTransform, Sample, SourceFn, TrainTransform


class BatchPlan:
    """Global batches of dataset indices, deterministic in (seed, iteration)."""

    def __init__(self, aspect_landscape: list[bool], batch_size: int, seed: int, group: bool = True):
        if len(aspect_landscape) == 0:
            raise ValueError("cannot batch an empty dataset")
        self.landscape = np.asarray(aspect_landscape, dtype=bool)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self._epochs: list[list[list[int]]] = []
        self._starts: list[int] = [0]

    def _epoch(self, e: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, e]).permutation(len(self.landscape))
        if not self.group:
            reps = -(-self.batch_size // len(order))  # tiny datasets: repeat so a batch fits
            order = np.tile(order, reps)
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        buckets: dict[bool, list[int]] = {True: [], False: []}
        batches = []
        for idx in order.tolist():
            b = buckets[bool(self.landscape[idx])]
            b.append(idx)
            if len(b) == self.batch_size:
                batches.append(list(b))
                b.clear()
        if not batches:  # fewer images per orientation than a batch: fall back to ungrouped
            return BatchPlan(self.landscape.tolist(), self.batch_size, self.seed, group=False)._epoch(e)
        return batches

    def batch(self, iteration: int) -> list[int]:
        while self._starts[-1] <= iteration:
            ep = self._epoch(len(self._epochs))
            self._epochs.append(ep)
            self._starts.append(self._starts[-1] + len(ep))
        e = int(np.searchsorted(self._starts, iteration, side="right")) - 1
        return self._epochs[e][iteration - self._starts[e]]


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, slot]).generate_state(1)[0])


class TrainBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch as (index, augmentation seed) pairs."""

    def __init__(self, plan: BatchPlan, start_iter: int, max_iter: int, rank: int = 0, world_size: int = 1):
        if plan.batch_size % world_size:
            raise ValueError(f"global batch {plan.batch_size} is not divisible by {world_size} processes")
        self.plan, self.start, self.stop = plan, start_iter, max_iter
        self.per_rank = plan.batch_size // world_size
        self.offset = rank * self.per_rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            idx = self.plan.batch(it)
            slots = range(self.offset, self.offset + self.per_rank)
            yield [(idx[s], sample_seed(self.plan.seed, it, s)) for s in slots]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def load_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def to_target(s: Sample, image_id: int) -> dict:
    keep = ~s.iscrowd  # crowd regions are not training targets (detectron2 filters them too)
    t = {"boxes": torch.from_numpy(s.boxes[keep]).reshape(-1, 4), "labels": torch.from_numpy(s.labels[keep]),
         "image_id": image_id}
    if s.masks is not None:
        t["masks"] = torch.from_numpy(s.masks[keep])
    if s.keypoints is not None:
        t["keypoints"] = torch.from_numpy(s.keypoints[keep])
    return t


def record_sample(r: Record, with_masks: bool, with_keypoints: bool) -> Sample:
    image = load_image(r.file_name)
    masks = r.masks() if (with_masks and r.segmentations is not None) else None
    if with_masks and masks is None:
        masks = np.zeros((r.num_instances, r.height, r.width), dtype=np.uint8)
    kps = r.keypoints if with_keypoints else None
    return Sample(image, r.boxes.copy(), r.labels, r.iscrowd, masks, kps)


class TrainSet(torch.utils.data.Dataset):
    """Sample ``index`` augmented with the generator seeded by ``seed``; Copy-Paste's source image is
    drawn from the same generator (another index of the set), so an item is a function of its key."""

    def __init__(self, ds: Dataset, transform: TrainTransform | LSJTransform, with_masks: bool,
                 with_keypoints: bool):
        self.records, self.transform = ds.records, transform
        self.with_masks, self.with_keypoints = with_masks, with_keypoints
        # Copy-Paste pastes by masks: loaded for it even when the model takes none (faster_rcnn)
        self.load_masks = with_masks or transform.needs_masks

    def __len__(self) -> int:
        return len(self.records)

    def _sample(self, r: Record) -> Sample:
        return record_sample(r, self.load_masks, self.with_keypoints)

    def _source(self, index: int) -> SourceFn:
        def draw(rng: np.random.Generator) -> Sample | None:
            n = len(self.records)
            if n < 2:
                return None
            return self._sample(self.records[(index + 1 + int(rng.integers(n - 1))) % n])  # any other image
        return draw

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = key
        r = self.records[index]
        s = self.transform(self._sample(r), np.random.default_rng(seed), self._source(index))
        if s.masks is not None and not self.with_masks:
            s = replace(s, masks=None)
        image = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)  # uint8 CHW
        return image, to_target(s, r.image_id)


def collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def train_loader(ds: Dataset, transform: TrainTransform | LSJTransform, batch_size: int, seed: int, start_iter: int,
                 max_iter: int, with_masks: bool, with_keypoints: bool, num_workers: int = 2,
                 group: bool = True, rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    plan = BatchPlan([r.width >= r.height for r in ds.records], batch_size, seed, group)
    sampler = TrainBatchSampler(plan, start_iter, max_iter, rank, world_size)
    return torch.utils.data.DataLoader(
        TrainSet(ds, transform, with_masks, with_keypoints), batch_sampler=sampler, collate_fn=collate,
        num_workers=num_workers, persistent_workers=False, prefetch_factor=4 if num_workers else None,
        generator=torch.Generator().manual_seed(seed))  # not the global RNG: resume stays exact


class EvalSet(torch.utils.data.Dataset):
    """Original-size images (the model resizes at test time and maps detections back)."""

    def __init__(self, records: Sequence[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        return torch.from_numpy(load_image(r.file_name)).permute(2, 0, 1), r.image_id


def eval_loader(records: Sequence[Record], num_workers: int = 2, rank: int = 0, world_size: int = 1,
                batch_size: int = 1) -> torch.utils.data.DataLoader:
    shard = records[rank::world_size]
    return torch.utils.data.DataLoader(EvalSet(shard), batch_size=batch_size, num_workers=num_workers,
                                       collate_fn=collate)
