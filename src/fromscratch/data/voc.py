"""PASCAL VOC XML -> the same records as COCO (``difficult`` kept, for VOC mAP to ignore).

A VOC source is a folder with ``Annotations/`` and ``JPEGImages/`` (all of it), or an image-set
file ``VOC2007/ImageSets/Main/trainval.txt`` (those ids). VOC boxes are 1-based inclusive pixel
indices; like Detectron and torchvision's VOC references we subtract 1 from xmin/ymin to get
0-based xyxy.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fromscratch.data.records import Dataset, Record
from fromscratch.data.validate import Problem, format_problems
from fromscratch.errors import DataError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


@dataclass
class VocAnnotation:
    xml: str
    filename: str
    width: int
    height: int
    names: list[str]
    boxes: np.ndarray  # (N, 4) xyxy, 0-based
    difficult: np.ndarray  # (N,) bool


def _text(node: ET.Element, tag: str, xml: str, rec: str | None, problems: list[Problem]) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        problems.append(Problem(xml, rec, tag, f"missing required tag <{tag}>"))
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml: str, rec: str | None, problems: list[Problem]) -> float | None:
    text = _text(node, tag, xml, rec, problems)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(Problem(xml, rec, tag, f"expected a number, got {text!r}"))
        return None


def parse_voc_xml(xml: str | Path, problems: list[Problem]) -> VocAnnotation | None:
    """Parse one annotation file; every missing or malformed tag is appended to ``problems``."""
    xml = str(xml)
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        problems.append(Problem(xml, None, None, f"XML syntax error: {e}"))
        return None
    except OSError as e:
        problems.append(Problem(xml, None, None, f"cannot read: {e.strerror}"))
        return None
    before = len(problems)
    filename = _text(root, "filename", xml, None, problems)
    size = root.find("size")
    if size is None:
        problems.append(Problem(xml, None, "size", "missing required tag <size>"))
        w = h = None
    else:
        w, h = _number(size, "width", xml, None, problems), _number(size, "height", xml, None, problems)
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        rec = f"object {i}"
        name = _text(obj, "name", xml, rec, problems)
        bb = obj.find("bndbox")
        if bb is None:
            problems.append(Problem(xml, rec, "bndbox", "missing required tag <bndbox>"))
            continue
        coords = [_number(bb, t, xml, rec, problems) for t in ("xmin", "ymin", "xmax", "ymax")]
        if name is None or any(c is None for c in coords):
            continue
        x0, y0, x1, y1 = coords
        if x1 <= x0 or y1 <= y0:  # type: ignore[operator]
            problems.append(Problem(xml, rec, "bndbox", f"empty box xmin={x0} ymin={y0} xmax={x1} ymax={y1}"))
            continue
        d = obj.find("difficult")
        names.append(name)
        boxes.append([x0 - 1, y0 - 1, x1, y1])  # type: ignore[operator]
        difficult.append(d is not None and (d.text or "0").strip() == "1")
    if len(problems) > before:
        return None
    return VocAnnotation(xml, filename or "", int(w or 0), int(h or 0), names,
                         np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(difficult, dtype=bool))


def voc_to_dataset(annotations: list[VocAnnotation], image_dir: str, class_names: list[str] | None = None,
                   source: str = "") -> Dataset:
    """Build records; classes are the 20 VOC classes when every name is one of them, else sorted names."""
    found = sorted({n for a in annotations for n in a.names})
    if class_names is None:
        class_names = VOC_CLASSES if set(found) <= set(VOC_CLASSES) else found
    index = {n: i + 1 for i, n in enumerate(class_names)}
    unknown = sorted(set(found) - set(index))
    if unknown:
        raise DataError(f"{source}: object names {unknown} are not among the classes {class_names}")
    records = []
    for k, a in enumerate(annotations):
        records.append(Record(
            image_id=k + 1, file_name=str(Path(image_dir) / a.filename), width=a.width, height=a.height,
            boxes=a.boxes, labels=np.array([index[n] for n in a.names], dtype=np.int64),
            iscrowd=np.zeros(len(a.names), dtype=bool), ann_ids=[], difficult=a.difficult, file_ref=a.filename))
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return Dataset(records, cats, source, image_dir)


def load_voc(path: str | Path, class_names: list[str] | None = None) -> Dataset:
    """Read a VOC folder or image-set file; all problems are reported together."""
    path = Path(path)
    if path.is_file():  # .../VOC2007/ImageSets/Main/trainval.txt
        root = path.parents[2]
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        xmls = [root / "Annotations" / f"{i}.xml" for i in ids]
    elif (path / "Annotations").is_dir():
        root = path
        xmls = sorted((path / "Annotations").glob("*.xml"))
    else:
        raise DataError(f"{path}: not a VOC folder (no Annotations/) nor an ImageSets .txt file")
    if not xmls:
        raise DataError(f"{path}: the dataset is empty (no annotation files)")
    problems: list[Problem] = []
    anns = [a for a in (parse_voc_xml(x, problems) for x in xmls) if a is not None]
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {path}:\n{format_problems(problems)}")
    return voc_to_dataset(anns, str(root / "JPEGImages"), class_names, str(path))
