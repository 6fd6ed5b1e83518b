"""The in-memory form every reader produces (COCO json, VOC XML) and every stage consumes.

Boxes are float32 xyxy in pixels; labels are contiguous 1..C (0 is torchvision's background) with
the original category ids kept in ``Dataset.label_to_cat_id`` so results are written back in the
file's own ids. Masks stay as COCO polygons/RLE and are decoded only when asked for (a COCO image
with 50 instances at 800x1333 is 50 MB of masks).

A ``Dataset`` holds its records either as a Python list or, after ``Dataset.packed()``, as a
``PackedRecords``: every record pickled into one numpy byte buffer plus an offsets array (the idea of
detectron2's ``DatasetFromList(serialize=True)``). A list of records is millions of small Python objects
(each polygon a list of floats); a process forked from one that holds them (a DataLoader worker)
writes to their pages as it touches them (reference counts, the garbage collector's passes), so each
worker ends up with its own copy. The packed form is three arrays whose pages nobody writes: workers
share them for good, and pickling them (spawn-started workers) is three memory copies.
"""
from __future__ import annotations

import operator
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, overload

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


_FIELDS = tuple(f.name for f in fields(Record))


def _encode(r: Record) -> bytes:
    # a Record as the tuple of its field values: no class reference nor field names in every entry
    obj: Any = tuple(getattr(r, f) for f in _FIELDS) if type(r) is Record else r
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(data: memoryview) -> Record:
    obj = pickle.loads(data)
    return Record(*obj) if type(obj) is tuple else obj


def _same(a: Any, b: Any) -> bool:
    """Equality of field values, numpy arrays by dtype, shape and content (``==`` on them is elementwise)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    return bool(a == b)


def same_record(a: Record, b: Record) -> bool:
    """``a`` and ``b`` hold the same values (the dataclass ``==`` cannot: it asks a numpy array for a truth value)."""
    return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in _FIELDS)


class PackedRecords(Sequence[Record]):
    """A read-only sequence of records stored as one uint8 buffer of pickles and an int64 offsets array.

    ``self[i]`` unpickles record i: a new ``Record`` every time, with its own arrays (changing it does not
    change what is stored). Slices and ``take`` return new ``PackedRecords``; iteration, ``len``, ``in``,
    ``index`` and ``==`` (with another ``PackedRecords`` or a list of records) behave as on the list.
    ``image_ids`` is kept as an array beside the buffer, so selecting images reads no record.
    """

    __slots__ = ("_buf", "_offsets", "_ids")

    def __init__(self, records: Iterable[Record] = ()) -> None:
        if isinstance(records, PackedRecords):
            self._buf, self._offsets, self._ids = records._buf, records._offsets, records._ids
            return
        out, ends, ids = bytearray(), [0], []
        for r in records:
            out += _encode(r)
            ends.append(len(out))
            ids.append(r.image_id)
        # an owned, exact-size copy: the bytearray over-allocates as it grows
        self._set(np.frombuffer(out, dtype=np.uint8).copy(), np.asarray(ends, dtype=np.int64),
                  np.asarray(ids, dtype=np.int64))

    def _set(self, buf: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> None:
        for a in (buf, offsets, ids):
            a.flags.writeable = False
        self._buf, self._offsets, self._ids = buf, offsets, ids

    @classmethod
    def _from_arrays(cls, buf: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> PackedRecords:
        new = cls.__new__(cls)
        new._set(buf, offsets, ids)
        return new

    def __reduce__(self) -> tuple:
        # three arrays: pickling (a spawn-started worker, a copy) costs a memory copy, not a walk over records
        return PackedRecords._from_arrays, (self._buf, self._offsets, self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> PackedRecords: ...

    def __getitem__(self, index: int | slice) -> Record | PackedRecords:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self.take(range(start, stop, step))
            stop = max(start, stop)
            lo, hi = int(self._offsets[start]), int(self._offsets[stop])
            # contiguous: a view of the same buffer, no copy
            return PackedRecords._from_arrays(self._buf[lo:hi], self._offsets[start:stop + 1] - lo,
                                              self._ids[start:stop])
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {index} out of range for {n} records")
        return _decode(memoryview(self._buf[self._offsets[i]:self._offsets[i + 1]]))

    def __iter__(self) -> Iterator[Record]:
        buf, ends = memoryview(self._buf), self._offsets.tolist()
        for i in range(len(ends) - 1):
            yield _decode(buf[ends[i]:ends[i + 1]])

    def __contains__(self, value: object) -> bool:
        return isinstance(value, Record) and any(same_record(r, value) for r in self)

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        n = len(self)
        lo, hi, _ = slice(start, stop).indices(n)
        if isinstance(value, Record):
            for i in range(lo, hi):
                if same_record(self[i], value):
                    return i
        raise ValueError(f"{value!r} is not in the records")

    def count(self, value: Any) -> int:
        return sum(same_record(r, value) for r in self) if isinstance(value, Record) else 0

    def take(self, indices: Iterable[int]) -> PackedRecords:
        """The records at ``indices`` (in that order, negative allowed), packed: copies their bytes only."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"record index out of range for {n} records")
        idx = np.where(idx < 0, idx + n, idx)
        starts, ends = self._offsets[idx], self._offsets[idx + 1]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        buf = np.empty(int(offsets[-1]), dtype=np.uint8)
        for s, e, o in zip(starts.tolist(), ends.tolist(), offsets[:-1].tolist()):
            buf[o:o + e - s] = self._buf[s:e]
        return PackedRecords._from_arrays(buf, offsets, self._ids[idx])

    @property
    def image_ids(self) -> np.ndarray:
        """Every record's ``image_id`` in order (read-only int64 array), without unpickling."""
        return self._ids

    @property
    def nbytes(self) -> int:
        """Bytes held: the pickles, the offsets and the image ids."""
        return int(self._buf.nbytes + self._offsets.nbytes + self._ids.nbytes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedRecords):
            if len(self) != len(other):
                return False
            if np.array_equal(self._offsets, other._offsets) and np.array_equal(self._buf, other._buf):
                return True
        elif not isinstance(other, list):
            return NotImplemented
        return len(self) == len(other) and all(same_record(a, b) for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # as a list: equal by content, so not hashable

    def __repr__(self) -> str:
        return f"PackedRecords({len(self)} records, {self.nbytes / 2**20:.1f} MiB)"


@dataclass
class Dataset:
    records: list[Record] | PackedRecords  # a list, or one shared byte buffer after packed()
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

    def subset(self, image_ids: Iterable[int]) -> Dataset:
        """The records whose image id is in ``image_ids``, in this dataset's order, stored as here."""
        keep = set(int(i) for i in image_ids)
        if isinstance(self.records, PackedRecords):
            wanted = np.fromiter(keep, dtype=np.int64, count=len(keep))
            recs: list[Record] | PackedRecords = self.records.take(np.flatnonzero(np.isin(self.records.image_ids,
                                                                                          wanted)))
        else:
            recs = [r for r in self.records if r.image_id in keep]
        return Dataset(recs, self.categories, self.source, self.image_root, self.info)

    def head(self, n: int | None) -> Dataset:
        """The first ``n`` records (all for None or 0): what ``eval.max_images`` evaluates."""
        if not n:
            return self
        return Dataset(self.records[:n], self.categories, self.source, self.image_root, self.info)

    @property
    def is_packed(self) -> bool:
        return isinstance(self.records, PackedRecords)

    def packed(self) -> Dataset:
        """This dataset with its records in one shared byte buffer (``PackedRecords``); itself if they are."""
        if isinstance(self.records, PackedRecords):
            return self
        return replace(self, records=PackedRecords(self.records))
