"""Dataset checks that name the file, the record and the field, run before any training step.

``fromscratch validate`` lists *every* problem (not just the first), and training runs the same
checks first: a bad annotation found at hour 30 of a 6x schedule costs the run (docs/paper.md, Schedules).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (COCO has rounding at the border)


@dataclass(frozen=True)
class Problem:
    file: str
    record: str | None  # "image id=3", "annotation id=17", "object 2"
    field: str | None
    message: str
    image_id: int | None = None  # what `on_invalid=skip` drops
    ann_id: int | None = None

    def __str__(self) -> str:
        loc = self.file
        if self.record:
            loc += f", {self.record}"
        if self.field:
            loc += f", field '{self.field}'"
        return f"{loc}: {self.message}"


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def resolve_image_path(root: str, file_name: str, allow_outside: bool) -> tuple[str, str | None]:
    """Join ``file_name`` to ``root``; a name that escapes the root (``../../etc/passwd``) is refused."""
    path = os.path.normpath(os.path.join(root, file_name))
    if not allow_outside:
        root_abs = os.path.abspath(root)
        if os.path.commonpath([root_abs, os.path.abspath(path)]) != root_abs:
            return path, f"'{file_name}' escapes the image root {root} (set data.allow_outside_root=true to allow)"
    return path, None


def check_coco_images(file: str, images: list[dict], root: str, allow_outside: bool, check_files: bool) -> list[Problem]:
    problems: list[Problem] = []
    seen: set = set()
    valid: list[tuple[dict, str]] = []
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            problems.append(Problem(file, f"images[{i}]", None, "expected an object"))
            continue
        iid = img.get("id")
        rec = f"image id={iid}" if iid is not None else f"images[{i}]"
        if not isinstance(iid, int) or isinstance(iid, bool):
            problems.append(Problem(file, rec, "id", f"expected an integer, got {iid!r}"))
            continue
        if iid in seen:
            problems.append(Problem(file, rec, "id", "duplicate image id", image_id=iid))
            continue
        seen.add(iid)
        bad = False
        for key in ("width", "height"):
            v = img.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(Problem(file, rec, key, f"expected a positive integer, got {v!r}", image_id=iid))
                bad = True
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            problems.append(Problem(file, rec, "file_name", f"expected a file name, got {name!r}", image_id=iid))
            continue
        path, err = resolve_image_path(root, name, allow_outside)
        if err:
            problems.append(Problem(file, rec, "file_name", err, image_id=iid))
            continue
        if not bad:
            valid.append((img, path))
    if check_files:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for found in pool.map(lambda ip: check_image_file(file, *ip), valid):
                problems.extend(found)
    return problems


def check_image_file(file: str, img: dict, path: str) -> list[Problem]:
    from PIL import Image

    iid = img["id"]
    rec = f"image id={iid}"
    if "\x00" in path:
        return [Problem(file, rec, "file_name", "file name contains a NUL byte", image_id=iid)]
    if not os.path.isfile(path):
        return [Problem(file, rec, "file_name", f"image file not found: {path}", image_id=iid)]
    try:
        with Image.open(path) as im:
            size = im.size
            im.load()  # a truncated file fails here, not at hour 30
    except Exception as e:  # PIL raises many types for broken files
        return [Problem(file, rec, "file_name", f"unreadable or truncated image {path}: {e}", image_id=iid)]
    if size != (img["width"], img["height"]):
        return [Problem(file, rec, "width/height",
                        f"json says {img['width']}x{img['height']} but {path} is {size[0]}x{size[1]}", image_id=iid)]
    return []


def check_coco_annotation(file: str, ann: Any, idx: int, images: dict[int, dict], cats: dict[int, dict],
                          seen_ids: set) -> list[Problem]:
    if not isinstance(ann, dict):
        return [Problem(file, f"annotations[{idx}]", None, "expected an object")]
    aid = ann.get("id")
    rec = f"annotation id={aid}" if aid is not None else f"annotations[{idx}]"
    if not isinstance(aid, int) or isinstance(aid, bool):
        return [Problem(file, rec, "id", f"expected an integer, got {aid!r}")]
    if aid in seen_ids:
        return [Problem(file, rec, "id", "duplicate annotation id", ann_id=aid)]
    seen_ids.add(aid)
    out: list[Problem] = []

    def bad(fld: str, msg: str) -> None:
        out.append(Problem(file, rec, fld, msg, ann_id=aid))

    iid = ann.get("image_id")
    img = images.get(iid) if _int(iid) else None
    if img is None:
        bad("image_id", f"no image with id {iid!r}")
        return out
    cid = ann.get("category_id")
    if not _int(cid) or cid not in cats:
        bad("category_id", f"unknown category id {cid!r} (known: {sorted(cats)[:20]})")
    W, H = img.get("width"), img.get("height")
    if not (_int(W) and _int(H) and W > 0 and H > 0):  # the image's own problem is reported already
        W = H = math.inf
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_num(v) for v in box)):
        bad("bbox", f"expected [x, y, w, h] numbers, got {box!r}")
    elif any(math.isnan(v) or math.isinf(v) for v in box):
        bad("bbox", f"non-finite value in {box}")
    elif box[2] <= 0 or box[3] <= 0:
        bad("bbox", f"width and height must be > 0, got w={box[2]} h={box[3]}")
    elif (box[0] < -BOX_TOLERANCE or box[1] < -BOX_TOLERANCE or box[0] + box[2] > W + BOX_TOLERANCE
          or box[1] + box[3] > H + BOX_TOLERANCE):
        bad("bbox", f"{box} lies outside the {W}x{H} image")
    seg = ann.get("segmentation")
    if seg is not None and seg != []:
        msg = _check_segmentation(seg, W, H)
        if msg:
            bad("segmentation", msg)
    kps = ann.get("keypoints")
    if kps is not None:
        names = cats[cid].get("keypoints") if _int(cid) and cid in cats else None
        k = len(names) if isinstance(names, list) else 0
        if not isinstance(kps, list) or not all(_num(v) for v in kps) or len(kps) % 3 or (k and len(kps) != 3 * k):
            want = f"3 x {k} = {3 * k}" if k else "a multiple of 3"
            n = len(kps) if isinstance(kps, list) else kps
            bad("keypoints", f"expected {want} numbers (x, y, v per keypoint), got {n}")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1, True, False):
        bad("iscrowd", f"expected 0 or 1, got {crowd!r}")
    return out


def _check_segmentation(seg: Any, W: int, H: int) -> str | None:
    if isinstance(seg, list):
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_num(v) for v in poly):
                return f"polygon {j}: expected a list of numbers"
            if len(poly) % 2:
                return f"polygon {j}: odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon {j}: fewer than 3 points ({len(poly) // 2})"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2):
            return f"RLE needs 'size': [height, width], got {size!r}"
        if math.isfinite(W) and list(size) != [H, W]:
            return f"RLE size {size} differs from the image's [height, width] = [{H}, {W}]"
        counts = seg.get("counts")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "uncompressed RLE 'counts' must be non-negative integers"
            if math.isfinite(W) and sum(counts) != H * W:
                return f"uncompressed RLE counts sum to {sum(counts)}, not height x width = {H * W}"
            return None
        if not isinstance(counts, str):
            return "RLE needs 'counts' (a string, or a list of run lengths)"
        try:
            from pycocotools import mask as mask_utils

            mask_utils.area({"size": list(size), "counts": counts.encode("ascii")})
        except Exception as e:  # malformed compressed RLE: pycocotools raises various errors
            return f"compressed RLE 'counts' does not decode: {e}"
        return None
    return f"expected polygons or an RLE object, got {type(seg).__name__}"


def check_coco_dict(file: str, data: Any, root: str, allow_outside: bool = False,
                    check_files: bool = True) -> list[Problem]:
    """Every problem in a parsed COCO json (structure, ids, geometry, and optionally image files)."""
    if not isinstance(data, dict):
        return [Problem(file, None, None, f"expected a JSON object at the top level, got {type(data).__name__}")]
    problems: list[Problem] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problems.append(Problem(file, None, key, "missing or not a list"))
    if problems:
        return problems
    if not data["images"]:
        return [Problem(file, None, "images", "the dataset is empty (no images)")]
    cats: dict[int, dict] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            problems.append(Problem(file, f"categories[{i}]", "id", "a category needs an integer 'id' and a 'name'"))
        elif c["id"] in cats:
            problems.append(Problem(file, f"category id={c['id']}", "id", "duplicate category id"))
        elif "keypoints" in c and not (isinstance(c["keypoints"], list) and all(isinstance(n, str) for n in c["keypoints"])):
            problems.append(Problem(file, f"category id={c['id']}", "keypoints", "expected a list of keypoint names"))
        else:
            cats[c["id"]] = c
    problems += check_coco_images(file, data["images"], root, allow_outside, check_files)
    images = {img["id"]: img for img in data["images"] if isinstance(img, dict) and isinstance(img.get("id"), int)}
    seen: set = set()
    for i, ann in enumerate(data["annotations"]):
        problems += check_coco_annotation(file, ann, i, images, cats, seen)
    return problems


def format_problems(problems: Iterable[Problem], limit: int = 50) -> str:
    problems = list(problems)
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def image_root_for(path: str, image_root: str | None) -> str:
    return image_root if image_root else str(Path(path).resolve().parent)
