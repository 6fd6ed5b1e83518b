"""PackedRecords: records pickled into one byte buffer behave as the list they came from."""
import gc
import pickle
import sys
from dataclasses import fields

import numpy as np
import pytest

from fromscratch.data.coco import dataset_to_coco, load_coco
from fromscratch.data.records import Dataset, PackedRecords, Record, same_record
from tests.conftest import make_coco


@pytest.fixture
def ds(tmp_path) -> Dataset:
    return load_coco(make_coco(tmp_path, num_images=6))


def assert_same(a: Record, b: Record) -> None:
    assert type(a) is type(b) is Record
    for f in fields(Record):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert type(x) is type(y) and x == y, f.name


def test_every_field_round_trips(ds):
    recs = ds.records
    # every kind of value is there: polygons, compressed and uncompressed RLE, crowd, keypoints
    assert all(r.segmentations and r.keypoints is not None and r.iscrowd.any() for r in recs)
    recs[1].difficult = np.array([False, True, False])  # VOC's field too
    packed = PackedRecords(recs)
    assert len(packed) == len(recs) == 6
    for i, r in enumerate(recs):
        assert_same(packed[i], r)
        assert_same(packed[i - len(recs)], r)  # negative indices
        assert_same(packed[np.int64(i)], r)  # numpy integers (a permutation's entries)
    for a, b in zip(packed, recs, strict=True):
        assert_same(a, b)
    assert packed[0].masks().shape == recs[0].masks().shape and (packed[0].masks() == recs[0].masks()).all()
    with pytest.raises(IndexError):
        packed[6]
    with pytest.raises(IndexError):
        packed[-7]
    with pytest.raises(TypeError):
        packed["0"]


def test_records_come_out_new_and_writable(ds):
    packed = PackedRecords(ds.records)
    r = packed[0]
    r.boxes += 1  # the arrays are the record's own, as in the list
    r.ann_ids.append(999)
    assert_same(packed[0], ds.records[0])


@pytest.mark.parametrize("key", [slice(None), slice(1, 4), slice(None, 3), slice(4, None), slice(-2, None),
                                 slice(None, None, 2), slice(1, None, 3), slice(None, None, -1), slice(5, 1, -2),
                                 slice(3, 3), slice(10, 20), slice(4, 1)])
def test_slices_are_packed_and_match_the_list(ds, key):
    packed = PackedRecords(ds.records)
    part = packed[key]
    assert isinstance(part, PackedRecords)
    want = ds.records[key]
    assert len(part) == len(want) and part == want
    assert [r.image_id for r in part] == [r.image_id for r in want] == part.image_ids.tolist()
    assert part[::2] == want[::2]  # a slice of a slice (a view with offsets of its own)
    assert pickle.loads(pickle.dumps(part)) == want


def test_comparisons_and_sequence_methods(ds):
    recs = ds.records
    packed = PackedRecords(recs)
    assert packed == recs and recs == packed and packed == PackedRecords(recs) and packed == packed[:]
    assert packed != recs[:-1] and packed != recs[::-1] and packed != packed[1:]
    assert packed != tuple(recs)  # as a list is not equal to a tuple
    other = PackedRecords(recs)
    assert other == packed
    changed = list(recs)
    changed[2] = Record(**{f.name: getattr(recs[2], f.name) for f in fields(Record)})
    changed[2].boxes = changed[2].boxes + 0.5
    assert packed != changed and not same_record(changed[2], recs[2])
    assert recs[3] in packed and changed[2] not in packed and "x" not in packed
    assert packed.index(recs[3]) == 3 and packed.count(recs[3]) == 1
    with pytest.raises(ValueError):
        packed.index(changed[2])
    assert [r.image_id for r in reversed(packed)] == [r.image_id for r in reversed(recs)]
    assert packed.take([4, -1, 0]) == [recs[4], recs[-1], recs[0]]
    with pytest.raises(TypeError):
        hash(packed)
    with pytest.raises(TypeError):
        packed[0] = recs[0]  # read-only
    assert "6 records" in repr(packed)
    assert len(PackedRecords([])) == 0 and list(PackedRecords([])) == [] and PackedRecords([]) == []


def test_pickle_is_three_arrays(ds):
    packed = PackedRecords(ds.records)
    data = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(data)
    assert isinstance(back, PackedRecords) and back == ds.records == packed
    # the pickle is the buffer (plus offsets and ids), not a walk over records: no Record class in it
    assert len(data) < packed.nbytes + 1000 and data.count(b"fromscratch") == 1
    with pytest.raises(ValueError):
        back._buf[0] = 0  # read-only after unpickling too


def test_dataset_packed_and_subset(ds):
    packed = ds.packed()
    assert isinstance(packed.records, PackedRecords) and packed.is_packed and not ds.is_packed
    assert packed.packed() is packed  # idempotent
    assert packed == ds and packed.records == ds.records
    assert (packed.categories, packed.source, packed.image_root, packed.info) == (
        ds.categories, ds.source, ds.image_root, ds.info)
    for prop in ("num_classes", "label_to_cat_id", "class_names", "has_masks", "has_keypoints", "keypoint_names"):
        assert getattr(packed, prop) == getattr(ds, prop), prop
    assert packed.num_instances() == ds.num_instances()
    sub = packed.subset([5, 2, 99])
    assert isinstance(sub.records, PackedRecords)  # the storage kind is kept
    assert [r.image_id for r in sub.records] == [2, 5]  # the dataset's order, unknown ids ignored
    assert sub.records == ds.subset([5, 2, 99]).records
    assert isinstance(ds.subset([2]).records, list)
    assert len(packed.subset([]).records) == 0
    assert dataset_to_coco(packed) == dataset_to_coco(ds)


def test_the_buffer_is_what_is_held(tmp_path):
    """N records are a handful of objects (three arrays), not N records' worth of Python objects
    (each a dict, arrays, lists of polygons and floats) that reference counts and the garbage collector
    write to: what keeps pages shared with forked loader workers."""
    big = load_coco(make_coco(tmp_path, num_images=40))
    small = big.subset(range(1, 5))
    for d in (small, big):
        packed = PackedRecords(d.records)
        held = [o for o in gc.get_referents(packed) if not isinstance(o, type)]
        assert len(held) == 3 and all(isinstance(a, np.ndarray) for a in held)  # buffer, offsets, ids
        assert all(not gc.is_tracked(a) for a in held)  # the garbage collector never walks them
        assert all(a.base is None or isinstance(a.base, np.ndarray) for a in held)
    # memory that grows with the records is in the arrays' data only, not in Python objects
    sizes = {len(d.records): sum(sys.getsizeof(a) - a.nbytes for a in gc.get_referents(PackedRecords(d.records))
                                 if isinstance(a, np.ndarray)) for d in (small, big)}
    assert sizes[4] == sizes[40]
    # the list holds thousands of Python objects that all grow with the records
    assert count_objects(big.records) > 40 * 20 and count_objects(PackedRecords(big.records)) <= 4


def count_objects(obj, seen=None) -> int:
    """Python objects reachable from obj (types and modules excluded)."""
    seen = set() if seen is None else seen
    todo, n = [obj], 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type) or type(o).__name__ == "module":
            continue
        seen.add(id(o))
        n += 1
        todo += gc.get_referents(o)
    return n
