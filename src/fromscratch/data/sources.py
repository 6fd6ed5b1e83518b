"""One entry point from a config's data section to records: format, image root, subset, checks.

Both ``fromscratch validate`` and training go through here, so they run the same checks.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fromscratch.data.coco import load_coco, read_json
from fromscratch.data.records import Dataset
from fromscratch.data.validate import Problem, check_coco_dict, check_image_file, image_root_for
from fromscratch.errors import DataError


def guess_format(path: str) -> str:
    p = Path(path)
    return "voc" if p.is_dir() or p.suffix == ".txt" else "coco"


def concat(datasets: list[Dataset]) -> Dataset:
    """Several sources as one training set (the paper's VOC trainval07 + train12): same classes
    required; image and annotation ids renumbered so they stay unique."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.class_names != first.class_names:
            raise DataError(f"{ds.source}: classes {ds.class_names} differ from {first.source}'s {first.class_names}")
    records, next_id, next_ann = [], 1, 1
    for ds in datasets:
        for r in ds.records:
            n = r.num_instances
            records.append(replace(r, image_id=next_id, ann_ids=list(range(next_ann, next_ann + n))))
            next_id, next_ann = next_id + 1, next_ann + n
    return Dataset(records, first.categories, " + ".join(d.source for d in datasets), first.image_root, first.info)


def load_sources(paths: str | list[str], subset: str | None = None, **kwargs: Any) -> Dataset:
    """``load_dataset`` for one path, or the concatenation of several (a subset applies to the result)."""
    if isinstance(paths, str):
        return load_dataset(paths, subset=subset, **kwargs)
    ds = concat([load_dataset(p, **kwargs) for p in paths])
    return _restrict(ds, subset, " + ".join(paths)) if subset else ds


def load_dataset(path: str, fmt: str | None = None, image_root: str | None = None, on_invalid: str = "error",
                 check_images: bool = True, allow_outside_root: bool = False, subset: str | None = None) -> Dataset:
    """Read a COCO json or VOC source, checked; restricted to a subset id list when given."""
    fmt = guess_format(path) if fmt in (None, "auto") else fmt
    if not Path(path).exists():
        raise DataError(f"{path}: dataset not found (check data.train / data.val)")
    if fmt == "voc":
        from fromscratch.data.voc import load_voc

        ds = load_voc(path)
        if check_images:
            problems = _voc_image_problems(ds)
            if problems:
                from fromscratch.data.validate import format_problems

                raise DataError(f"{len(problems)} problem(s) in {path}:\n{format_problems(problems)}")
    else:
        ds = load_coco(path, image_root, on_invalid, check_images, allow_outside_root)
    return _restrict(ds, subset, path) if subset else ds


def _restrict(ds: Dataset, subset: str, path: str) -> Dataset:
    from fromscratch.data.subsets import read_subset

    ids = read_subset(subset)
    have = {r.image_id for r in ds.records}
    missing = [i for i in ids if i not in have]
    if missing:
        raise DataError(f"{subset}: {len(missing)} image id(s) are not in {path} (first: {missing[:5]}); "
                        "was the subset made from another dataset?")
    return ds.subset(ids)


def _voc_image_problems(ds: Dataset) -> list[Problem]:
    out = []
    for r in ds.records:
        img = {"id": r.image_id, "width": r.width, "height": r.height}
        for p in check_image_file(ds.source, img, r.file_name):
            out.append(Problem(p.file, f"image {r.file_ref}", p.field, p.message))
    return out


def find_problems(path: str, image_root: str | None = None, check_images: bool = True,
                  allow_outside_root: bool = False) -> tuple[list[Problem], str]:
    """Every problem in a dataset (for `fromscratch validate`) and a one-line summary when clean."""
    if guess_format(path) == "voc":
        from fromscratch.data.voc import load_voc

        try:
            ds = load_voc(path)
        except DataError as e:
            return [Problem(path, None, None, str(e))], ""
        problems = _voc_image_problems(ds) if check_images else []
        return problems, f"{len(ds.records)} images, {sum(r.num_instances for r in ds.records)} objects"
    try:
        data = read_json(path)
    except DataError as e:
        return [Problem(path, None, None, str(e).split(": ", 1)[-1])], ""
    problems = check_coco_dict(path, data, image_root_for(path, image_root), allow_outside_root, check_images)
    if problems:
        return problems, ""
    return [], (f"{len(data['images'])} images, {len(data['annotations'])} annotations, "
                f"{len(data['categories'])} categories")
