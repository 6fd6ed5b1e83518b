"""Classification pre-training of the detector's own trunk: the paper's "ImageNet" stage at our scale.

The trunk is the one ``model.backbone`` names, with the same norm, so the pre-trained arm differs from
the scratch arm only in its initial weights (the paper fine-tunes GN models from GN-pretrained ones).
Sources: Fashion-MNIST's *train* split (the test split is reserved for fashion-scenes) or an
ImageNet-style folder ``train/<class>/*.jpg``. Writes ``backbone.pth`` (trunk state dict, loadable as
``model.backbone.weights``) and ``accounting.json`` (images, pixels, epochs, wall time) that the
study's sample accounting adds to the pre-trained arm (the paper's Fig. 2).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fromscratch.config import Config
from fromscratch.engine.checkpoint import save_checkpoint
from fromscratch.engine.optim import build_optimizer
from fromscratch.errors import ConfigError
from fromscratch.models.backbones import RESNETS, resnet_trunk
from fromscratch.utils import atomic_write_text

logger = logging.getLogger(__name__)


def _fashion_batches(images: torch.Tensor, labels: torch.Tensor, batch: int, size: int, mean: torch.Tensor,
                     std: torch.Tensor, rng: torch.Generator,
                     train: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Grey 28x28 items -> tinted RGB at ``size`` (the tint of fashion-scenes), flipped at random."""
    order = torch.randperm(len(images), generator=rng) if train else torch.arange(len(images))
    for i in range(0, len(order) - (batch - 1 if train else 0), batch):
        idx = order[i:i + batch]
        x = images[idx].float().div(255)[:, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if train:
            tint = 0.35 + 0.65 * torch.rand(len(idx), 3, 1, 1, generator=rng)
            flip = torch.rand(len(idx), generator=rng) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        else:
            tint = torch.full((len(idx), 3, 1, 1), 0.7)
        yield (x * tint - mean) / std, labels[idx]


def load_source(source: str, val_images: int, max_images: int | None, seed: int) -> dict[str, Any]:
    """Fashion-MNIST's train split (held-out part for top-1), as uint8 tensors."""
    from fromscratch.data.embedded.fashion_mnist import CLASSES, load_split

    images, labels = load_split("train")
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = order[:val_images], order[val_images:]
    if max_images:
        train = train[:max_images]
    t = torch.from_numpy
    return {"train": (t(images[train]), t(labels[train].astype(np.int64))),
            "val": (t(images[val]), t(labels[val].astype(np.int64))), "classes": CLASSES}


def _folder_loaders(root: Path, size: int, batch: int, mean: list[float], std: list[float], seed: int,
                    max_images: int | None) -> tuple[Any, Any, list[str]]:
    """ImageNet-style ``root/train/<class>/*`` (and ``root/val/<class>/*`` if present), read with
    torchvision's ImageFolder; the usual RandomResizedCrop + flip for training."""
    from torchvision import datasets
    from torchvision import transforms as T

    if not (root / "train").is_dir():
        raise ConfigError(f"pretrain.source={root}: expected an ImageNet-style folder with train/<class>/ images")
    norm = T.Normalize(mean, std)
    train = datasets.ImageFolder(str(root / "train"), T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                                                                  T.ToTensor(), norm]))
    if max_images and max_images < len(train):
        idx = np.random.default_rng(seed).permutation(len(train))[:max_images].tolist()
        train = torch.utils.data.Subset(train, idx)
    g = torch.Generator().manual_seed(seed)
    tl = torch.utils.data.DataLoader(train, batch, shuffle=True, drop_last=True, num_workers=2, generator=g)
    vl = None
    if (root / "val").is_dir():
        val_tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), norm])
        val = datasets.ImageFolder(str(root / "val"), val_tf)
        vl = torch.utils.data.DataLoader(val, 256, num_workers=2)
    classes = train.dataset.classes if isinstance(train, torch.utils.data.Subset) else train.classes
    return tl, vl, classes


def build_classifier(cfg: Config, num_classes: int) -> nn.Module:
    bb = cfg.model.backbone
    if bb.name not in RESNETS:
        raise ConfigError(f"pretrain: model.backbone.name={bb.name!r}; the pre-training stage trains torchvision "
                          f"ResNets ({', '.join(sorted(RESNETS))}); bring other trunks as a weights file")
    trunk = resnet_trunk(bb.name, bb.norm, bb.gn_groups)
    trunk.fc = nn.Linear(trunk.fc.in_features, num_classes)
    return trunk


@torch.no_grad()
def top1(model: nn.Module, batches: Any) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train()
    return correct / max(1, total)


def _batches(cfg: Config) -> tuple[Any, Any, int, int]:
    """(epoch -> train batches, val batches or None, training images, number of classes)."""
    p = cfg.pretrain
    mean = torch.tensor(cfg.model.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std).view(1, 3, 1, 1)
    if p.source == "fashion-mnist":
        src = load_source(p.source, p.val_images, p.max_images, p.seed)
        rng = torch.Generator().manual_seed(p.seed)

        def epoch() -> Iterator:
            return _fashion_batches(*src["train"], p.batch_size, p.image_size, mean, std, rng, train=True)

        val = _fashion_batches(*src["val"], 256, p.image_size, mean, std, rng, train=False)
        return epoch, val, len(src["train"][1]), len(src["classes"])
    tl, vl, classes = _folder_loaders(Path(p.source), p.image_size, p.batch_size, cfg.model.pixel_mean,
                                      cfg.model.pixel_std, p.seed, p.max_images)
    return (lambda: iter(tl)), vl, len(tl.dataset), len(classes)


def pretrain(cfg: Config) -> dict[str, Any]:
    """Train, then write backbone.pth and accounting.json under ``cfg.pretrain.output``
    (``pretrain.method`` simclr/byol: study/ssl.py)."""
    p = cfg.pretrain
    if p.method != "supervised":
        from fromscratch.study.ssl import pretrain_ssl

        return pretrain_ssl(cfg)
    torch.manual_seed(p.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    epoch, val, n, num_classes = _batches(cfg)
    model = build_classifier(cfg, num_classes)
    iters = max(1, math.ceil(p.epochs * n / p.batch_size))
    opt = build_optimizer(model, p.lr, 0.9, p.weight_decay, 0.0)
    start, it, seen = time.perf_counter(), 0, 0
    while it < iters:
        for x, y in epoch():
            warm = min(1.0, (it + 1) / max(1, p.warmup_iters))
            for g in opt.param_groups:  # linear warm-up, then cosine to 0
                g["lr"] = p.lr * warm * 0.5 * (1 + math.cos(math.pi * it / iters))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it, seen = it + 1, seen + len(y)
            if it % 50 == 0 or it == iters:
                logger.info(f"pretrain iteration {it}/{iters}: loss {loss.item():.3f}")
            if it >= iters:
                break
    wall = time.perf_counter() - start
    acc = top1(model, val) if val is not None else None
    out = Path(p.output)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    save_checkpoint(out / "backbone.pth", state)
    acct = {"source": p.source, "backbone": cfg.model.backbone.name, "norm": cfg.model.backbone.norm,
            "images": seen, "instances": seen, "pixels": seen * p.image_size ** 2, "epochs": seen / n,
            "image_size": p.image_size, "wall_time_s": round(wall, 1), "val_top1": acc, "estimate": False}
    atomic_write_text(out / "accounting.json", json.dumps(acct, indent=1))
    return {"output": str(out), **acct}


# The published recipe for an ImageNet-pretrained trunk we did not train (the paper's Fig. 2 numbers).
IMAGENET_RECIPE = {"source": "ImageNet-1k (published recipe)", "images": 128_000_000, "instances": 128_000_000,
                   "pixels": 128_000_000 * 224 * 224, "epochs": 100, "image_size": 224, "estimate": True}
