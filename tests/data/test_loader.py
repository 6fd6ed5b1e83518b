import numpy as np

from fromscratch.data.coco import load_coco
from fromscratch.data.loader import BatchPlan, TrainBatchSampler, train_loader
from fromscratch.data.transforms import TrainTransform
from tests.conftest import make_coco


def test_plan_is_deterministic_and_grouped():
    land = [True, False] * 10
    p1, p2 = BatchPlan(land, 4, seed=3), BatchPlan(land, 4, seed=3)
    for it in (0, 1, 7, 30, 2):
        b = p1.batch(it)
        assert b == p2.batch(it) and len(b) == 4
        assert len({land[i] for i in b}) == 1  # one orientation per batch
    seen = set()
    for it in range(5):  # one epoch: 10 landscape + 10 portrait -> 4 full batches, no repeats
        seen |= set(p1.batch(it)) if it < 4 else set()
    assert len(seen) == 16


def test_ranks_split_the_global_batch():
    plan = BatchPlan([True] * 12, 4, seed=0)
    whole = list(TrainBatchSampler(plan, 0, 3))
    r0 = list(TrainBatchSampler(plan, 0, 3, rank=0, world_size=2))
    r1 = list(TrainBatchSampler(plan, 0, 3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == whole
    resumed = list(TrainBatchSampler(plan, 2, 3))
    assert resumed == whole[2:]  # resuming at iteration 2 gives the same batch and seeds


def test_loader_outputs(tmp_path):
    ds = load_coco(make_coco(tmp_path, num_images=4))
    dl = train_loader(ds, TrainTransform([32], "choice", 100, 0.5), 2, 0, 0, 2, True, True, num_workers=0)
    batches = list(dl)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images[0].dtype.is_floating_point is False and min(images[0].shape[1:]) == 32
    t = targets[0]
    assert t["boxes"].shape == (2, 4)  # the crowd annotation is not a training target
    assert t["masks"].shape[0] == 2 and t["masks"].shape[1:] == images[0].shape[1:]
    assert t["keypoints"].shape == (2, 3, 3)
    again = list(train_loader(ds, TrainTransform([32], "choice", 100, 0.5), 2, 0, 0, 2, True, True, num_workers=0))
    assert all(np.array_equal(a[1][0]["boxes"], b[1][0]["boxes"]) for a, b in zip(batches, again))
