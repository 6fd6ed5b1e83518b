"""COCO evaluation time: faster-coco-eval (fromscratch's default backend) vs pycocotools (the reference).

Detections are made from the ground truth (boxes jittered, masks shifted, random scores, plus false
positives), so every AP level is exercised: on the embedded val sets (bbox and segm; fashion-scenes has
masks) and on a synthetic set of --images images x --dets detections (bbox). Both backends run through
evaluation/coco.evaluate from the same dicts (json loading not included); the 12 summary numbers must be
equal (asserted), and the table gives seconds and the speed-up.
Usage: python benchmarks/eval.py [--images 5000] [--dets 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, table, target  # noqa: E402
from fromscratch.evaluation.coco import STAT_NAMES, evaluate  # noqa: E402


def fake_detections(gt: dict, per_image: int, segm: bool, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for img_id, (h, w) in sizes.items():
        anns = by_image.get(img_id, [])
        dets = []
        for a in anns[:per_image]:
            x, y, bw, bh = a["bbox"]
            j = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(cats))
            dets.append(([x + j[0], y + j[1], max(1.0, bw + j[2]), max(1.0, bh + j[3])], cat, a))
        while len(dets) < per_image:
            bw, bh = rng.uniform(4, w / 3), rng.uniform(4, h / 3)
            dets.append(([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], int(rng.choice(cats)), None))
        for box, cat, a in dets:
            # matched detections score higher on average, as a trained detector's do
            score = rng.uniform(0.3, 1.0) if a is not None else rng.uniform(0.0, 0.7)
            d = {"image_id": img_id, "category_id": cat, "bbox": [float(v) for v in box], "score": float(score)}
            if segm:
                m = np.zeros((h, w), dtype=np.uint8)
                x0, y0, x1, y1 = int(box[0]), int(box[1]), int(box[0] + box[2]), int(box[1] + box[3])
                m[max(0, y0):max(0, min(h, y1)), max(0, x0):max(0, min(w, x1))] = 1
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode()
                d["segmentation"] = rle
            out.append(d)
    return out


def synthetic_gt(images: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(80)]
    ims, anns = [], []
    for i in range(images):
        w, h = 640, 480
        ims.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i + 1}.jpg"})
        for _ in range(int(rng.integers(1, 15))):
            bw, bh = rng.uniform(8, 300), rng.uniform(8, 300)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    return {"images": ims, "annotations": anns, "categories": cats}


def timed(gt: dict, dets: list[dict], iou: str, backend: str) -> tuple[float, dict]:
    tick = time.perf_counter()
    out = evaluate(gt, dets, iou, backend)
    return time.perf_counter() - tick, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    args = ap.parse_args()
    cases = []
    for name, path, iou_types, per in (("fashion-scenes val", "data/fashion-scenes/val.json", ("bbox", "segm"), 50),
                                       ("trees val", "data/trees/val.json", ("bbox",), 100)):
        gt = json.loads((ROOT / path).read_text())
        for iou in iou_types:
            cases.append((f"{name} ({len(gt['images'])} images)", gt, fake_detections(gt, per, iou == "segm"), iou))
    gt = synthetic_gt(args.images)
    cases.append((f"synthetic ({args.images} images)", gt, fake_detections(gt, args.dets, False), "bbox"))
    rows, ratios = [], []
    for name, gt, dets, iou in cases:
        t_fast, fast = timed(gt, dets, iou, "faster_coco_eval")
        t_ref, ref = timed(gt, dets, iou, "pycocotools")
        diff = max(abs(fast[k] - ref[k]) for k in STAT_NAMES)
        assert diff < 1e-6, f"{name} {iou}: backends disagree by {diff}"
        ratios.append(t_ref / t_fast)
        rows.append([name, iou, f"{len(dets):,}", f"{ref['AP']:.2f}", f"{t_ref:.2f}", f"{t_fast:.2f}",
                     f"{t_ref / t_fast:.1f}x", f"{diff:.0e}"])
    print("## COCO evaluation: faster-coco-eval vs pycocotools\n")
    print(f"Same ground truth and detections through evaluation/coco.evaluate, json loading excluded. {machine()}.\n")
    print(table(["set", "iou type", "detections", "AP", "pycocotools s", "faster-coco-eval s", "speed-up",
                 "max |stat diff|"], rows))
    print()
    print(target(f"COCO eval speed-up on the {args.images}-image synthetic set", ratios[-1], 5.0))
    segm = [r for r, row in zip(ratios, rows) if row[1] == "segm"]
    if segm:
        print(target("COCO eval speed-up, segm (fashion-scenes val)", segm[0], 5.0))


if __name__ == "__main__":
    main()
