"""`fromscratch eval` and `fromscratch schedule` helpers: a checkpoint's AP, a dataset's size."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fromscratch.config import Config
from fromscratch.data.coco import read_json
from fromscratch.data.sources import load_dataset, load_sources
from fromscratch.data.subsets import read_subset
from fromscratch.data.transforms import resized_shape
from fromscratch.engine.trainer import pick_device
from fromscratch.errors import ConfigError
from fromscratch.evaluation.predict import ap_table, evaluate_dataset, predict
from fromscratch.evaluation.tta import tta_spec
from fromscratch.utils import atomic_write_text


def evaluate_checkpoint(cfg: Config, weights: str, out: str | None = None) -> tuple[Path, str]:
    """COCO AP of ``weights`` on ``data.val``; writes detections.json and metrics.json."""
    d = cfg.data
    if not d.val:
        raise ConfigError("data.val is not set: nothing to evaluate on")
    val = load_dataset(d.val, d.format, d.image_root, d.on_invalid, d.check_images, d.allow_outside_root)
    if cfg.eval.max_images:
        val = val.subset([r.image_id for r in val.records[:cfg.eval.max_images]])
    from fromscratch.evaluation.show import load_for_inference

    device = pick_device(cfg.train.device)
    model = load_for_inference(cfg, weights)[0].to(device)
    results = predict(model, val, device, d.num_workers, tta=tta_spec(cfg))
    metrics = evaluate_dataset(val, results, cfg.model.meta_arch, cfg.eval.backend)
    folder = Path(out) if out else Path(cfg.output_dir) / "eval"
    atomic_write_text(folder / "detections.json", json.dumps(results))
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=1))
    return folder, ap_table(metrics)


def dataset_stats(cfg: Config) -> tuple[int, float, float]:
    """(training images, mean pixels per resized image, instances per image) from data.train's json."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is not set (or pass --dataset-size)")
    if not isinstance(d.train, str) or Path(d.train).suffix != ".json":  # VOC, or several sources
        ds = load_sources(d.train, d.subset, fmt=d.format, check_images=False)
        sizes = [(r.height, r.width) for r in ds.records]
        inst = ds.num_instances() / max(1, len(ds.records))
    else:
        data = read_json(d.train)
        keep = set(read_subset(d.subset)) if d.subset else None
        imgs = [i for i in data["images"] if keep is None or i["id"] in keep]
        ids = {i["id"] for i in imgs}
        sizes = [(i["height"], i["width"]) for i in imgs]
        inst = sum(1 for a in data["annotations"] if a["image_id"] in ids and not a.get("iscrowd")) / max(1, len(imgs))
    short = float(np.mean(d.train_scales))
    px = [np.prod(resized_shape(h, w, int(short), d.max_size)[:2]) for h, w in sizes]
    return len(sizes), float(np.mean(px)) if px else 0.0, inst
