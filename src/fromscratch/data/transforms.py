"""Training augmentation of the image, boxes, masks and keypoints together, on torchvision's v2
functional ops (``torchvision.transforms.v2.functional`` on ``tv_tensors``).

Three pipelines (``data.augmentation``):

- ``standard``: the paper's. Short-side resize (scale augmentation: a short side drawn from
  ``data.train_scales``), long side capped at ``data.max_size``, horizontal flip.
- ``lsj``: large-scale jitter (detectron2's new baselines: ``ResizeScale`` + ``FixedSizeCrop``;
  torchvision's ``ScaleJitter`` + ``FixedSizeCrop``). Flip, scale the image to fit ``lsj_size x s``
  (s uniform in ``data.lsj_scale``, aspect kept), take a random window of at most ``lsj_size`` square,
  pad it bottom/right (``data.lsj_pad_value``) to exactly ``lsj_size x lsj_size``. Boxes are clipped to the window (and
  recomputed from the masks where there are masks, as detectron2's ``recompute_boxes``); an instance
  whose box or mask ends up empty is dropped with its mask, keypoints, label and crowd flag; keypoints
  outside the window become invisible.
- ``lsj_copypaste``: LSJ, then Simple Copy-Paste (Ghiasi et al. 2021) with probability
  ``data.copy_paste_prob``: another training image, LSJ-augmented the same way, gives a random
  non-empty subset of its instances, pasted on top (see ``copy_paste``).

Every random draw comes from the numpy Generator passed in, which the loader seeds with (seed,
iteration, slot), never from torch's or numpy's global RNG: a batch is a function of (seed,
iteration), so resuming is exact whatever the number of workers. Samples enter and leave as numpy
(``Sample``); the geometry in between is the v2 functional ops: image bilinear with antialias (what
PIL's bilinear does when it shrinks), masks nearest-exact (PIL's nearest: pixel centres), boxes and
keypoints by torchvision's kernels.

Training images are resized here, in the loader workers, so the model's own resize is skipped in
training (``models/build.py``): an LSJ canvas goes into the model as it is. Evaluation feeds original
images and lets the model resize (``data.test_scale``, ``data.max_size``), so detections come back in
original coordinates as torchvision does it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

# A target instance the pasted objects cover is dropped when fewer than this many of its mask pixels
# stay visible: a handful of scattered pixels of a hidden object is not a target worth learning (its
# box, recomputed from them, can span the whole object). Instances the paste does not touch are never
# dropped by it. The paper and torchvision's reference drop only fully covered ones (0 pixels left).
COPY_PASTE_MIN_PIXELS = 10

# a source for Copy-Paste: given the sample's generator, another training sample (or None: none to paste)
SourceFn = Callable[[np.random.Generator], "Sample | None"]


def sample_short_side(scales: list[int], sampling: str, rng: np.random.Generator) -> int:
    """detectron2's MIN_SIZE_TRAIN_SAMPLING: "choice" from a list, or "range" = uniform in [min, max]."""
    if sampling == "range":
        if len(scales) != 2:
            raise ValueError(f"scale_sampling='range' needs [min, max], got {scales}")
        return int(rng.integers(min(scales), max(scales) + 1))
    return int(scales[int(rng.integers(len(scales)))])


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int, float]:
    """Scale so the short side is ``short`` unless the long side would pass ``max_size``."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale))), scale


def lsj_shape(height: int, width: int, size: int, s: float) -> tuple[int, int]:
    """The size LSJ scales an image to: the largest that fits ``size*s`` square, aspect kept
    (detectron2's ResizeScale with target_height = target_width = size)."""
    scale = size * s / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def keypoint_flip_map(names: list[str]) -> list[int]:
    """Index permutation swapping ``left_*`` and ``right_*`` keypoints (COCO naming)."""
    index = {n: i for i, n in enumerate(names)}
    perm = list(range(len(names)))
    for n, i in index.items():
        for a, b in (("left_", "right_"), ("right_", "left_"), ("left", "right"), ("right", "left")):
            if n.startswith(a) and n.replace(a, b, 1) in index:
                perm[i] = index[n.replace(a, b, 1)]
                break
    return perm


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray
    iscrowd: np.ndarray
    masks: np.ndarray | None = None  # (N, H, W) uint8
    keypoints: np.ndarray | None = None  # (N, K, 3): x, y, visibility (invisible: 0, 0, 0)


# ---------------------------------------------------------------------------------- tv_tensors form


@dataclass
class _TV:
    """A Sample as tv_tensors, the types the v2 functional ops dispatch on."""

    image: tv_tensors.Image  # (3, H, W) uint8
    boxes: tv_tensors.BoundingBoxes  # (N, 4) float32, XYXY
    labels: np.ndarray
    iscrowd: np.ndarray
    masks: tv_tensors.Mask | None  # (N, H, W) uint8
    keypoints: tv_tensors.KeyPoints | None  # (N, K, 2) float32
    visibility: torch.Tensor | None  # (N, K) float32

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def select(self, keep: torch.Tensor) -> _TV:
        """The instances where ``keep`` (an (N,) bool tensor) is true, every field alike."""
        k = keep.numpy()
        return _TV(self.image, tv_tensors.wrap(self.boxes[keep], like=self.boxes), self.labels[k], self.iscrowd[k],
                   None if self.masks is None else tv_tensors.wrap(self.masks[keep], like=self.masks),
                   None if self.keypoints is None else tv_tensors.wrap(self.keypoints[keep], like=self.keypoints),
                   None if self.visibility is None else self.visibility[keep])


def _to_tv(s: Sample) -> _TV:
    h, w = s.image.shape[:2]
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1))
    boxes = tv_tensors.BoundingBoxes(torch.tensor(np.asarray(s.boxes, dtype=np.float32)).reshape(-1, 4),
                                     format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w))
    masks = None if s.masks is None else tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(s.masks)))
    kps = vis = None
    if s.keypoints is not None:
        k = torch.tensor(np.asarray(s.keypoints, dtype=np.float32))
        kps = tv_tensors.KeyPoints(k[..., :2], canvas_size=(h, w))
        vis = k[..., 2].clone()
    return _TV(image, boxes, np.asarray(s.labels), np.asarray(s.iscrowd, dtype=bool), masks, kps, vis)


def _from_tv(t: _TV) -> Sample:
    image = t.image.as_subclass(torch.Tensor).permute(1, 2, 0).contiguous().numpy()
    boxes = t.boxes.as_subclass(torch.Tensor).numpy().astype(np.float32, copy=False)
    masks = None if t.masks is None else t.masks.as_subclass(torch.Tensor).numpy()
    kps = None
    if t.keypoints is not None:
        kps = torch.cat([t.keypoints.as_subclass(torch.Tensor), t.visibility[..., None]], -1).numpy()
    return Sample(image, boxes, t.labels, t.iscrowd, masks, kps)


def _hide_keypoints(kps: tv_tensors.KeyPoints, vis: torch.Tensor, hidden: torch.Tensor
                    ) -> tuple[tv_tensors.KeyPoints, torch.Tensor]:
    """Keypoints where ``hidden`` or already invisible become (0, 0, 0), as COCO writes them."""
    off = hidden | (vis <= 0)
    xy = kps.as_subclass(torch.Tensor).masked_fill(off[..., None], 0.0)
    return tv_tensors.wrap(xy, like=kps), vis.masked_fill(off, 0.0)


def _nonempty(masks: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which of the (N, H, W) masks has a pixel (``any`` of a uint8 tensor is uint8)."""
    return masks.flatten(1).any(1).bool()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes of (N, H, W) masks, x2/y2 exclusive (pixel edges, as boxes are); an empty mask
    gives (0, 0, 0, 0)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    cols, rows = masks.any(1).bool(), masks.any(2).bool()  # (N, W), (N, H)
    x0 = cols.byte().argmax(1)
    x1 = w - cols.flip(1).byte().argmax(1)
    y0 = rows.byte().argmax(1)
    y1 = h - rows.flip(1).byte().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return boxes * cols.any(1, keepdim=True)


# ---------------------------------------------------------------------------------- geometric ops


def _resize_tv(t: _TV, h: int, w: int) -> _TV:
    if (h, w) == t.size:
        return t
    size = [h, w]
    return _TV(F.resize(t.image, size, interpolation=InterpolationMode.BILINEAR, antialias=True),
               F.resize(t.boxes, size), t.labels, t.iscrowd,
               None if t.masks is None else F.resize(t.masks, size, interpolation=InterpolationMode.NEAREST_EXACT),
               None if t.keypoints is None else F.resize(t.keypoints, size), t.visibility)


def _hflip_tv(t: _TV, flip_map: list[int] | None) -> _TV:
    kps, vis = t.keypoints, t.visibility
    if kps is not None and vis is not None:
        # torchvision flips keypoints as pixel indices (x -> W-1-x); ours are continuous coordinates
        # like the boxes' (x -> W-x, torchvision's detection reference and this module before v2), so a
        # keypoint on a box edge stays on it
        kps = tv_tensors.wrap(F.horizontal_flip(kps).as_subclass(torch.Tensor) + torch.tensor([1.0, 0.0]), like=kps)
        kps, vis = _hide_keypoints(kps, vis, torch.zeros_like(vis, dtype=torch.bool))  # v=0 stays (0, 0, 0)
        if flip_map is not None:
            kps, vis = tv_tensors.wrap(kps[:, flip_map], like=kps), vis[:, flip_map]
    return _TV(F.horizontal_flip(t.image), F.horizontal_flip(t.boxes), t.labels, t.iscrowd,
               None if t.masks is None else F.horizontal_flip(t.masks), kps, vis)


def _crop_pad_tv(t: _TV, top: int, left: int, size: int, pad_value: int = 0) -> _TV:
    """The window [top, top+size) x [left, left+size) of ``t`` (at most its extent), padded bottom/right
    to ``size x size`` (the image with ``pad_value``, masks with 0). Boxes are clipped to the window,
    keypoints outside it hidden; nothing is dropped yet (``_drop_empty``)."""
    h, w = t.size
    ch, cw = min(size, h - top), min(size, w - left)
    pad = [0, 0, size - cw, size - ch]  # left, top, right, bottom

    def crop_pad(x, fill=0):
        return F.pad(F.crop(x, top, left, ch, cw), pad, fill=fill)

    kps, vis = t.keypoints, t.visibility
    if kps is not None and vis is not None:
        kps = crop_pad(kps)
        xy = kps.as_subclass(torch.Tensor)
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= cw) & (xy[..., 1] >= 0) & (xy[..., 1] <= ch)
        kps, vis = _hide_keypoints(kps, vis, ~inside)
    return _TV(crop_pad(t.image, pad_value), crop_pad(t.boxes), t.labels, t.iscrowd,
               None if t.masks is None else crop_pad(t.masks), kps, vis)


def _drop_empty(t: _TV, had_mask: torch.Tensor | None) -> _TV:
    """Boxes recomputed from the masks where there is a mask; instances whose box is empty, or whose
    mask was not empty (``had_mask``) and now is, dropped."""
    boxes = t.boxes.as_subclass(torch.Tensor)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if t.masks is not None and had_mask is not None:
        tight = mask_boxes(t.masks.as_subclass(torch.Tensor))
        nonempty = tight[:, 2] > tight[:, 0]
        boxes = torch.where(nonempty[:, None], tight, boxes)
        keep &= nonempty | ~had_mask
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    t = replace(t, boxes=tv_tensors.wrap(boxes, like=t.boxes))
    return t if bool(keep.all()) else t.select(keep)


def _window(t: _TV, top: int, left: int, size: int, pad_value: int, had_mask: torch.Tensor | None) -> _TV:
    """LSJ's fixed-size crop and pad, then boxes from what is left of the masks and empty instances dropped
    (``had_mask``: which masks were non-empty before any of LSJ's geometry)."""
    return _drop_empty(_crop_pad_tv(t, top, left, size, pad_value), had_mask)


def _lsj_tv(t: _TV, size: int, scale: tuple[float, float], flip_prob: float, flip_map: list[int] | None,
            rng: np.random.Generator, pad_value: int = 0) -> _TV:
    """Flip, scale jitter, random crop, pad (draws: flip, scale, crop y, crop x, in that order)."""
    if flip_prob > 0 and rng.random() < flip_prob:  # first: the padding stays bottom/right
        t = _hflip_tv(t, flip_map)
    had_mask = None if t.masks is None else _nonempty(t.masks)
    s = float(rng.uniform(scale[0], scale[1]))
    t = _resize_tv(t, *lsj_shape(*t.size, size, s))
    h, w = t.size
    fy, fx = rng.random(2)  # one uniform per axis, as TF's resize_and_crop_image
    top, left = int(round(max(h - size, 0) * fy)), int(round(max(w - size, 0) * fx))
    return _window(t, top, left, size, pad_value, had_mask)


def _copy_paste_tv(t: _TV, src: _TV, rng: np.random.Generator) -> _TV:
    if t.masks is None or src.masks is None:
        raise ValueError("Copy-Paste needs the instance masks of both images")
    if t.size != src.size:
        raise ValueError(f"Copy-Paste pastes between images of one size, got {t.size} and {src.size}")
    candidates = np.flatnonzero(~src.iscrowd & _nonempty(src.masks).numpy())
    if len(candidates) == 0:
        return t
    k = int(rng.integers(1, len(candidates) + 1))
    pick = torch.from_numpy(np.sort(rng.choice(candidates, size=k, replace=False)))
    paste = src.select(torch.zeros(len(src.labels), dtype=torch.bool).index_fill_(0, pick, True))
    alpha = paste.masks.as_subclass(torch.Tensor).any(0).bool()  # (H, W): pixels the pasted objects cover

    pixels = torch.where(alpha, paste.image.as_subclass(torch.Tensor), t.image.as_subclass(torch.Tensor))
    image = tv_tensors.wrap(pixels, like=t.image)
    # the target's masks lose the covered pixels; only the window around the pasted pixels can change
    ya, xa = alpha.any(1).nonzero()[:, 0], alpha.any(0).nonzero()[:, 0]
    y0, y1, x0, x1 = int(ya[0]), int(ya[-1]) + 1, int(xa[0]), int(xa[-1]) + 1
    old = t.masks.as_subclass(torch.Tensor)
    window = old[:, y0:y1, x0:x1]
    covered = (window * alpha[y0:y1, x0:x1]).flatten(1).sum(1)
    touched = covered > 0
    masks = old.clone()
    masks[:, y0:y1, x0:x1] = window * ~alpha[y0:y1, x0:x1]
    after = torch.zeros(len(old), dtype=torch.long)  # visible pixels left, for the instances that lost some
    boxes = t.boxes.as_subclass(torch.Tensor)
    if bool(touched.any()):
        after[touched] = masks[touched].flatten(1).sum(1)
        boxes = boxes.clone()
        boxes[touched] = mask_boxes(masks[touched])
    kps, vis = t.keypoints, t.visibility
    if kps is not None and vis is not None:
        h, w = t.size
        xy = kps.as_subclass(torch.Tensor)
        px = xy[..., 0].floor().long().clamp(0, w - 1)
        py = xy[..., 1].floor().long().clamp(0, h - 1)
        # under a pasted object, or outside what is left of its own box (1 pixel of slack: a keypoint on
        # the object's edge, as annotated, may sit just outside its mask)
        b = boxes[:, None, :]
        outside = ((xy[..., 0] < b[..., 0] - 1) | (xy[..., 0] > b[..., 2] + 1) |
                   (xy[..., 1] < b[..., 1] - 1) | (xy[..., 1] > b[..., 3] + 1))
        kps, vis = _hide_keypoints(kps, vis, alpha[py, px] | (touched[:, None] & outside))
    kept = _TV(image, tv_tensors.wrap(boxes, like=t.boxes), t.labels, t.iscrowd,
               tv_tensors.wrap(masks, like=t.masks), kps, vis)
    kept = kept.select(~touched | (after >= COPY_PASTE_MIN_PIXELS))

    def cat(a, b, like):
        return tv_tensors.wrap(torch.cat([a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor)]), like=like)

    out_kps = out_vis = None
    if kept.keypoints is not None and kept.visibility is not None:
        if paste.keypoints is not None and paste.visibility is not None:
            out_kps = cat(kept.keypoints, paste.keypoints, kept.keypoints)
            out_vis = torch.cat([kept.visibility, paste.visibility])
        else:  # a source without keypoints: its objects' keypoints are all invisible
            n, kk = len(paste.labels), kept.keypoints.shape[1]
            out_kps = cat(kept.keypoints, torch.zeros((n, kk, 2)), kept.keypoints)
            out_vis = torch.cat([kept.visibility, torch.zeros((n, kk))])
    return _TV(image, cat(kept.boxes, paste.boxes, kept.boxes), np.concatenate([kept.labels, paste.labels]),
               np.concatenate([kept.iscrowd, np.zeros(len(paste.labels), dtype=bool)]),
               cat(kept.masks, paste.masks, kept.masks), out_kps, out_vis)


# ---------------------------------------------------------------------------------- public API


def resize(s: Sample, short: int, max_size: int) -> Sample:
    h, w = s.image.shape[:2]
    nh, nw, _ = resized_shape(h, w, short, max_size)
    if (nh, nw) == (h, w):
        return s
    return _from_tv(_resize_tv(_to_tv(s), nh, nw))


def hflip(s: Sample, flip_map: list[int] | None = None) -> Sample:
    return _from_tv(_hflip_tv(_to_tv(s), flip_map))


def lsj(s: Sample, size: int, scale: tuple[float, float], rng: np.random.Generator, flip_prob: float = 0.0,
        flip_map: list[int] | None = None, pad_value: int = 0) -> Sample:
    """Large-scale jitter of one sample: ``size x size`` out, whatever the input."""
    return _from_tv(_lsj_tv(_to_tv(s), size, scale, flip_prob, flip_map, rng, pad_value))


def crop_pad(s: Sample, top: int, left: int, size: int, pad_value: int = 0) -> Sample:
    """LSJ's fixed-size crop at a given offset: the window [top, top+size) x [left, left+size) (at most
    the image), padded bottom/right to ``size x size`` (image ``pad_value``, masks 0); boxes clipped
    (recomputed from the masks where there are masks), instances left empty dropped, keypoints outside
    the window hidden."""
    t = _to_tv(s)
    return _from_tv(_window(t, top, left, size, pad_value, None if t.masks is None else _nonempty(t.masks)))


def copy_paste(target: Sample, source: Sample, rng: np.random.Generator) -> Sample:
    """Simple Copy-Paste (Ghiasi et al. 2021) of two samples of one size (two LSJ canvases): a random
    non-empty subset of the source's non-crowd instances with a mask is pasted on the target. The
    pasted pixels replace the target's (no blending: the paper finds it unneeded); the target's masks
    lose the pixels now covered, the boxes of the instances that lost some are recomputed from what
    is left, and those left with fewer than ``COPY_PASTE_MIN_PIXELS`` pixels are dropped; the target's
    keypoints under a pasted object, or left outside their instance's shrunken box, become invisible.
    The pasted instances come last, with their masks, boxes, labels and keypoints."""
    return _from_tv(_copy_paste_tv(_to_tv(target), _to_tv(source), rng))


@dataclass
class TrainTransform:
    """``data.augmentation: standard``: short-side resize (scale augmentation) and flip (draws: short
    side, then flip)."""

    scales: list[int]
    sampling: str = "choice"
    max_size: int = 1333
    flip_prob: float = 0.5
    flip_map: list[int] | None = None
    needs_masks = False  # Copy-Paste only

    def __call__(self, s: Sample, rng: np.random.Generator, source: SourceFn | None = None) -> Sample:
        short = sample_short_side(self.scales, self.sampling, rng)
        flip = self.flip_prob > 0 and rng.random() < self.flip_prob
        h, w = s.image.shape[:2]
        nh, nw, _ = resized_shape(h, w, short, self.max_size)
        if (nh, nw) == (h, w) and not flip:
            return s
        t = _resize_tv(_to_tv(s), nh, nw)
        return _from_tv(_hflip_tv(t, self.flip_map) if flip else t)


@dataclass
class LSJTransform:
    """``data.augmentation: lsj`` (``copy_paste_prob`` 0) or ``lsj_copypaste``: large-scale jitter to a
    ``size x size`` canvas, then, with probability ``copy_paste_prob``, Copy-Paste from another training
    image that ``source`` loads (chosen with the same generator) and that is jittered the same way.
    Draws: the sample's LSJ, the paste coin, the source's index (``source``), its LSJ, the subset."""

    size: int = 1024
    scale: tuple[float, float] = (0.1, 2.0)
    flip_prob: float = 0.5
    flip_map: list[int] | None = None
    copy_paste_prob: float = 0.0
    pad_value: int = 0

    @property
    def needs_masks(self) -> bool:
        return self.copy_paste_prob > 0

    def __call__(self, s: Sample, rng: np.random.Generator, source: SourceFn | None = None) -> Sample:
        t = _lsj_tv(_to_tv(s), self.size, self.scale, self.flip_prob, self.flip_map, rng, self.pad_value)
        if self.copy_paste_prob > 0 and source is not None and rng.random() < self.copy_paste_prob:
            other = source(rng)
            if other is not None:
                src = _lsj_tv(_to_tv(other), self.size, self.scale, self.flip_prob, self.flip_map, rng, self.pad_value)
                t = _copy_paste_tv(t, src, rng)
        return _from_tv(t)
