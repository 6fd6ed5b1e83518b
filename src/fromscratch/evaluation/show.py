"""`fromscratch data show` and `fromscratch predict`: look at a dataset and at a model's detections."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fromscratch.config import Config
from fromscratch.data.loader import load_image
from fromscratch.data.records import Dataset, Record
from fromscratch.data.sources import load_dataset
from fromscratch.evaluation.predict import outputs_to_results
from fromscratch.utils import atomic_write_text
from fromscratch.visualize import draw, grid, list_images, save_png


def skeleton_of(ds: Dataset) -> list:
    return next((c["skeleton"] for c in ds.categories if c.get("skeleton")), [])


def draw_record(r: Record, ds: Dataset) -> np.ndarray:
    masks = r.masks() if r.segmentations is not None else None
    return draw(load_image(r.file_name), r.boxes, r.labels, ds.class_names, masks=masks, keypoints=r.keypoints,
                skeleton=skeleton_of(ds), crowd=r.iscrowd)


def show_dataset(path: str, out: str, n: int = 16, ids: Sequence[int] | None = None, seed: int = 0,
                 cols: int = 4) -> int:
    """A grid of ``n`` images (seeded choice, or ``ids``) with their annotations; returns the count."""
    ds = load_dataset(path)
    if ids:
        records = ds.subset(ids).records
    else:
        order = np.random.default_rng(seed).permutation(len(ds.records))[:n]
        records = [ds.records[i] for i in sorted(order)]
    tiles = [draw_record(r, ds) for r in records]
    save_png(grid(tiles, cols, titles=[f"id {r.image_id}" for r in records]), out)
    return len(tiles)


def _class_names(cfg: Config, num_classes: int) -> list[str]:
    for src in (cfg.data.val, cfg.data.train):
        if isinstance(src, str) and src.endswith(".json") and Path(src).exists():
            return [c["name"] for c in json.loads(Path(src).read_text())["categories"]]
    return [f"class {i}" for i in range(1, num_classes + 1)]


def load_for_inference(cfg: Config, weights: str) -> tuple[torch.nn.Module, list[str]]:
    """The model of ``cfg`` with a checkpoint's weights; classes from the checkpoint's predictor."""
    from fromscratch.engine.checkpoint import load_checkpoint
    from fromscratch.models.build import build_model

    state = load_checkpoint(Path(weights))
    state = state.get("model", state)
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    cfg = cfg.model_copy(deep=True)
    cfg.model.backbone.weights, cfg.model.backbone.force = None, True
    model = build_model(cfg, num_classes)
    model.load_state_dict(state)
    return model.eval(), _class_names(cfg, num_classes)


@torch.no_grad()
def predict_images(cfg: Config, weights: str, inputs: Sequence[str], out: str,
                   score_thresh: float = 0.5) -> dict[str, Any]:
    """One annotated PNG per readable image and a COCO results json; unreadable files are skipped."""
    model, names = load_for_inference(cfg, weights)
    out_dir = Path(out)
    results, images, skipped = [], [], []
    for k, path in enumerate(list_images(inputs), start=1):
        try:
            img = load_image(str(path))
        except Exception as e:  # PIL raises many types for unreadable files
            skipped.append(str(path))
            print(f"skipped {path}: cannot read it as an image ({e})")
            continue
        o = model([torch.from_numpy(img).permute(2, 0, 1).float().div(255)])[0]
        keep = o["scores"] >= score_thresh
        o = {key: v[keep] for key, v in o.items()}
        masks = (o["masks"][:, 0] > 0.5).numpy() if "masks" in o else None
        kps = o["keypoints"].numpy() if "keypoints" in o else None
        drawn = draw(img, o["boxes"].numpy(), o["labels"].numpy(), names, o["scores"].numpy(), masks, kps)
        save_png(drawn, out_dir / f"{path.stem}.png")
        results += outputs_to_results(o, k, {i: i for i in range(1, len(names) + 1)})
        images.append({"id": k, "file_name": str(path), "width": img.shape[1], "height": img.shape[0]})
    atomic_write_text(out_dir / "detections.json", json.dumps(results))
    atomic_write_text(out_dir / "images.json", json.dumps({"images": images,
                                                           "categories": [{"id": i + 1, "name": n}
                                                                          for i, n in enumerate(names)]}))
    return {"written": len(images), "skipped": skipped, "detections": len(results), "out": str(out_dir)}
