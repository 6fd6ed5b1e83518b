"""Trained weights put to use: the one place a checkpoint becomes a model (``eval``, ``predict``, and
anything else that runs a trained detector), then COCO AP on ``data.val`` or drawn predictions."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fromscratch import comm
from fromscratch.config import Config
from fromscratch.data.build import build_dataset
from fromscratch.data.loader import load_image
from fromscratch.evaluation.predict import ap_table, evaluate_dataset, outputs_to_results, predict
from fromscratch.evaluation.tta import tta_spec
from fromscratch.models.build import build_model
from fromscratch.models.init import read_state_dict
from fromscratch.utils import atomic_write_text
from fromscratch.visualize import draw, list_images, save_png

logger = logging.getLogger(__name__)


def _class_names(cfg: Config, num_classes: int) -> list[str]:
    for src in (cfg.data.val, cfg.data.train):
        if isinstance(src, str) and src.endswith(".json") and Path(src).exists():
            return [c["name"] for c in json.loads(Path(src).read_text())["categories"]]
    return [f"class {i}" for i in range(1, num_classes + 1)]


def load_for_inference(cfg: Config, weights: str) -> tuple[torch.nn.Module, list[str]]:
    """The model of ``cfg`` with a checkpoint's (or state dict's) weights, in eval mode; the number of
    classes comes from the checkpoint's predictor, their names from the config's json."""
    state = read_state_dict(weights)
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    cfg = cfg.model_copy(deep=True)
    cfg.model.backbone.weights, cfg.model.backbone.force = None, True
    model = build_model(cfg, num_classes)
    model.load_state_dict(state)
    return model.eval(), _class_names(cfg, num_classes)


def evaluate_checkpoint(cfg: Config, weights: str, out: str | None = None) -> tuple[Path, str]:
    """COCO AP of ``weights`` on ``data.val``; writes detections.json and metrics.json."""
    val = build_dataset(cfg.data, "val")
    val = val.head(cfg.eval.max_images)
    device = comm.pick_device(cfg.train.device)
    model = load_for_inference(cfg, weights)[0].to(device)
    results = predict(model, val, device, cfg.data.num_workers, tta=tta_spec(cfg))
    metrics = evaluate_dataset(val, results, cfg.model.meta_arch, cfg.eval.backend)
    folder = Path(out) if out else Path(cfg.output_dir) / "eval"
    atomic_write_text(folder / "detections.json", json.dumps(results))
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=1))
    return folder, ap_table(metrics)


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
            logger.warning(f"skipped {path}: cannot read it as an image ({e})")
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
