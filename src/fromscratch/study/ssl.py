"""Self-supervised pre-training of the detector's own trunk on unlabeled images (the third arm).

Methods come from PyPI's ``lightly`` (losses, projection/prediction heads, augmentations), not
hand-written: SimCLR (contrastive: two augmented views of an image attract, the batch's other images
repel; ``NTXentLoss``) and BYOL (self-distillation: an online network predicts a momentum copy's
embedding of the other view; no negatives). Both suit a CNN trunk with GroupNorm.

The encoder is the detector's own trunk (``model.backbone``: name, norm, GN groups) with MSRA
init, global-average-pooled at its last stage, so ``backbone.pth`` loads into the detector with every
trunk key matched. Images: the study's training images with their labels ignored (``source:
data.train``; whole images through random resized crops) or every image under a folder the user names.
Its quality check is a k-NN probe: top-1 of the object crops of the labeled validation set, classified
by their nearest training crops in the encoder's feature space, against the same trunk at random init.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fromscratch.config import Config
from fromscratch.errors import ConfigError
from fromscratch.visualize import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

SSL_METHODS = ("simclr", "byol")
DATA_TRAIN = "data.train"


def _lightly() -> Any:
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise ConfigError("pretrain.method simclr/byol needs the lightly package: pip install -e '.[ssl]'") from None
    import lightly.loss
    import lightly.models.modules
    import lightly.models.utils
    import lightly.transforms
    import lightly.utils.scheduler

    return lightly


class Encoder(nn.Module):
    """The detector's trunk, its last feature map average-pooled to a vector."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from fromscratch.models.backbones import build_backbone
        from fromscratch.models.init import msra_fill

        bb = cfg.model.backbone
        if bb.norm == "FrozenBN":
            raise ConfigError("pretrain.method simclr/byol: model.backbone.norm=FrozenBN cannot learn from scratch; "
                              "use GN (or SyncBN) for the trunk the stage trains")
        self.body = build_backbone(bb.name, bb.norm, bb.gn_groups, 8, "none").body
        msra_fill(list(self.body.modules()))
        with torch.no_grad():
            self.dim = self._features(torch.zeros(2, 3, 64, 64)).shape[1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        last = list(out.values())[-1] if isinstance(out, dict) else (out[-1] if isinstance(out, list) else out)
        return last.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)


def image_files(cfg: Config) -> list[str]:
    """The stage's unlabeled images: the run's training images (labels ignored) or a folder's."""
    src = cfg.pretrain.source
    if src == DATA_TRAIN:
        from fromscratch.data.build import build_dataset

        return [r.file_name for r in build_dataset(cfg.data, "train", check_images=False).records]
    root = Path(src)
    if not root.is_dir():
        raise ConfigError(f"pretrain.source={src!r}: for a self-supervised method, give {DATA_TRAIN!r} (the "
                          "training images, labels ignored) or a folder of unlabeled images")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"pretrain.source={src}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    return files


class _Views(torch.utils.data.Dataset):
    def __init__(self, files: list[str], transform: Any) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


class _Method(nn.Module):
    """The encoder plus lightly's heads and loss for one method; ``loss(views)`` for a batch of pairs."""

    def __init__(self, method: str, encoder: Encoder) -> None:
        super().__init__()
        lightly = _lightly()
        mods = lightly.models.modules
        self.method, self.encoder = method, encoder
        d = encoder.dim
        if method == "simclr":
            self.head = mods.SimCLRProjectionHead(d, d, 128)
            self.criterion = lightly.loss.NTXentLoss()
        else:
            self.head = mods.BYOLProjectionHead(d, 4 * d, 128)
            self.predictor = mods.BYOLPredictionHead(128, 4 * d, 128)
            self.target_encoder, self.target_head = copy.deepcopy(encoder), copy.deepcopy(self.head)
            for m in (self.target_encoder, self.target_head):
                lightly.models.utils.deactivate_requires_grad(m)
            self.criterion = lightly.loss.NegativeCosineSimilarity()

    def loss(self, x0: torch.Tensor, x1: torch.Tensor, progress: float) -> torch.Tensor:
        if self.method == "simclr":
            return self.criterion(self.head(self.encoder(x0)), self.head(self.encoder(x1)))
        lightly = _lightly()
        m = lightly.utils.scheduler.cosine_schedule(int(progress * 1000), 1000, 0.99, 1.0)
        lightly.models.utils.update_momentum(self.encoder, self.target_encoder, m)
        lightly.models.utils.update_momentum(self.head, self.target_head, m)
        p0, p1 = self.predictor(self.head(self.encoder(x0))), self.predictor(self.head(self.encoder(x1)))
        with torch.no_grad():
            z0, z1 = self.target_head(self.target_encoder(x0)), self.target_head(self.target_encoder(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


def _transform(method: str, cfg: Config) -> Any:
    t = _lightly().transforms
    norm = {"mean": list(cfg.model.pixel_mean), "std": list(cfg.model.pixel_std)}
    size = cfg.pretrain.image_size
    lo = cfg.pretrain.min_scale
    if method == "simclr":
        return t.SimCLRTransform(input_size=size, normalize=norm, gaussian_blur=0.0, min_scale=lo)
    return t.BYOLTransform(view_1_transform=t.BYOLView1Transform(input_size=size, normalize=norm, min_scale=lo),
                           view_2_transform=t.BYOLView2Transform(input_size=size, normalize=norm, min_scale=lo))


def object_crops(cfg: Config, split: str, size: int, limit: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``limit`` labeled object crops of a split (non-crowd boxes, resized to ``size``), for the
    k-NN probe; normalized as the detector's inputs."""
    from PIL import Image

    from fromscratch.data.build import build_dataset

    ds = build_dataset(cfg.data, split, check_images=False, subset=False)  # type: ignore[arg-type]
    mean = torch.tensor(cfg.model.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std).view(3, 1, 1)
    xs, ys = [], []
    for r in ds.records:
        if len(xs) >= limit:
            break
        with Image.open(r.file_name) as im:
            img = im.convert("RGB")
            for box, label, crowd in zip(r.boxes, r.labels, r.iscrowd):
                x0, y0, x1, y1 = (int(round(float(v))) for v in box)
                if crowd or x1 - x0 < 4 or y1 - y0 < 4 or len(xs) >= limit:
                    continue
                crop = img.crop((x0, y0, x1, y1)).resize((size, size))
                t = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)
                xs.append((t - mean) / std)
                ys.append(int(label))
    if not xs:
        raise ConfigError(f"k-NN probe: no object crops in data.{split}")
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def knn_top1(encoder: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
             k: int = 20) -> float:
    """Top-1 of ``val`` crops by a cosine-similarity-weighted vote of their ``k`` nearest ``train`` crops."""
    was = encoder.training
    encoder.eval()
    feats = [F.normalize(torch.cat([encoder(x[i:i + 256]) for i in range(0, len(x), 256)]), dim=1)
             for x in (train[0], val[0])]
    encoder.train(was)
    sim = feats[1] @ feats[0].T
    w, idx = sim.topk(min(k, sim.shape[1]), dim=1)
    votes = torch.zeros(len(val[1]), int(max(train[1].max(), val[1].max())) + 1)
    votes.scatter_add_(1, train[1][idx], w.exp())
    return float((votes.argmax(1) == val[1]).float().mean())


def pretrain_ssl(cfg: Config) -> dict[str, Any]:
    """Train the trunk with ``cfg.pretrain.method``; write backbone.pth and accounting.json (images,
    views, pixels, epochs, wall time, k-NN top-1 before and after) under ``cfg.pretrain.output``."""
    from fromscratch.engine.checkpoint import save_checkpoint
    from fromscratch.engine.optim import build_optimizer
    from fromscratch.utils import atomic_write_text

    p = cfg.pretrain
    torch.manual_seed(p.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    files = image_files(cfg)
    if len(files) < 2:
        raise ConfigError(f"pretrain.source={p.source}: {len(files)} image(s); a self-supervised stage needs a batch")
    if p.max_images and p.max_images < len(files):
        files = [files[i] for i in np.random.default_rng(p.seed).permutation(len(files))[:p.max_images]]
    batch = min(p.batch_size, len(files))
    encoder = Encoder(cfg)
    probe = None
    if cfg.data.train and cfg.data.val:
        probe = object_crops(cfg, "train", p.image_size), object_crops(cfg, "val", p.image_size)
    before = knn_top1(encoder, *probe) if probe else None
    model = _Method(p.method, encoder)
    g = torch.Generator().manual_seed(p.seed)
    loader = torch.utils.data.DataLoader(_Views(files, _transform(p.method, cfg)), batch, shuffle=True,
                                         drop_last=True, num_workers=0, generator=g)
    iters = max(1, math.ceil(p.epochs * len(files) / batch))
    opt = build_optimizer(model, p.lr, 0.9, p.weight_decay, 0.0)
    start, it, seen, losses = time.perf_counter(), 0, 0, []
    while it < iters:
        for views in loader:
            warm = min(1.0, (it + 1) / max(1, p.warmup_iters))
            for grp in opt.param_groups:  # linear warm-up, then cosine to 0
                grp["lr"] = p.lr * warm * 0.5 * (1 + math.cos(math.pi * it / iters))
            loss = model.loss(views[0], views[1], it / iters)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it, seen = it + 1, seen + len(views[0])
            losses.append(loss.item())
            if it % 20 == 0 or it == iters:
                logger.info(f"{p.method} iteration {it}/{iters}: loss {loss.item():.3f}")
            if it >= iters:
                break
    wall = time.perf_counter() - start
    after = knn_top1(encoder, *probe) if probe else None
    out = Path(p.output)
    save_checkpoint(out / "backbone.pth", encoder.body.state_dict())
    acct = {"source": p.source, "method": p.method, "backbone": cfg.model.backbone.name,
            "norm": cfg.model.backbone.norm, "unlabeled_images": len(files), "images": seen, "instances": 0,
            "views": 2 * seen, "pixels": 2 * seen * p.image_size ** 2, "epochs": seen / len(files),
            "image_size": p.image_size, "iterations": iters, "wall_time_s": round(wall, 1),
            "loss_first": float(np.mean(losses[:5])), "loss_last": float(np.mean(losses[-5:])),
            "knn_top1_random_init": before, "knn_top1": after, "val_top1": after, "estimate": False}
    atomic_write_text(out / "accounting.json", json.dumps(acct, indent=1))
    if probe:
        logger.info(f"{p.method}: k-NN top-1 on val object crops {after:.3f} (random init {before:.3f})")
    return {"output": str(out), **acct}
