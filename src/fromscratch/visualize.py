"""Drawing: boxes, translucent masks (one colour per instance), keypoints with skeleton, class names,
crowd regions marked (boxes and masks by torchvision.utils). One module for `data show`, `predict` and
the study report's figure."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MASK_ALPHA = 0.45
CROWD_COLOUR = (160, 160, 160)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def colour(i: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per instance index (golden-ratio hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _caption(i: int, labels: Sequence[int] | None, class_names: Sequence[str] | None,
             scores: Sequence[float] | None, is_crowd: bool) -> str:
    text = ""
    if labels is not None:
        lab = int(labels[i])
        text = class_names[lab - 1] if class_names and 0 < lab <= len(class_names) else str(lab)
    if scores is not None:
        text += f" {float(scores[i]):.2f}"
    if is_crowd:
        text += " crowd"
    return text.strip()


def draw(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int] | None = None,
         class_names: Sequence[str] | None = None, scores: Sequence[float] | None = None,
         masks: np.ndarray | None = None, keypoints: np.ndarray | None = None,
         skeleton: Sequence[Sequence[int]] | None = None, crowd: Sequence[bool] | None = None) -> np.ndarray:
    """Return a copy of ``image`` (H, W, 3 uint8) with the instances drawn; labels are 1-based.

    Masks and boxes: torchvision.utils' draw_segmentation_masks and draw_bounding_boxes (where masks
    overlap, torchvision tints the overlap black). Captions and keypoints by hand: draw_bounding_boxes
    puts its labels 2 px further into the box, over more of the object, and draw_keypoints takes one
    colour per call and draws every skeleton line white, over the points; here each instance's skeleton
    and points have its colour, points on top."""
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    n = len(boxes)
    out = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)).permute(2, 0, 1)
    if masks is not None and n:  # both warn and draw nothing on an empty prediction: not called then
        m = torch.from_numpy(np.asarray(masks[:n]).astype(bool))
        out = draw_segmentation_masks(out, m, alpha=MASK_ALPHA, colors=[colour(i) for i in range(n)])
    is_crowd = [bool(crowd[i]) if crowd is not None else False for i in range(n)]
    cols = [CROWD_COLOUR if is_crowd[i] else colour(i) for i in range(n)]
    if n:
        out = draw_bounding_boxes(out, torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(n, 4)),
                                  colors=cols, width=2)
    pil = Image.fromarray(out.permute(1, 2, 0).numpy())
    d = ImageDraw.Draw(pil)
    for i in range(n):  # captions at the box corner (draw_bounding_boxes: 3 px into the box, see above)
        text = _caption(i, labels, class_names, scores, is_crowd[i])
        if text:
            d.text((float(boxes[i][0]) + 2, float(boxes[i][1]) + 1), text, fill=cols[i])
    if keypoints is not None:
        for i in range(n):
            kp = keypoints[i]
            for a, b in skeleton or []:
                if kp[a - 1, 2] > 0 and kp[b - 1, 2] > 0:
                    d.line([tuple(kp[a - 1, :2]), tuple(kp[b - 1, :2])], fill=colour(i), width=2)
            for x, y, v in kp:
                if v > 0:
                    d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour(i))
    return np.asarray(pil)


def grid(images: list[np.ndarray], cols: int = 4, tile: int = 256, titles: list[str] | None = None) -> np.ndarray:
    """Tiles of at most ``tile`` px a side, left to right, top to bottom, on white."""
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    canvas = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for k, img in enumerate(images):
        im = Image.fromarray(img)
        im.thumbnail((tile, tile))
        x, y = (k % cols) * tile, (k // cols) * tile
        canvas.paste(im, (x, y))
        if titles:
            d.text((x + 3, y + 3), titles[k], fill=(255, 255, 0))
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def list_images(paths: Sequence[str]) -> list[Path]:
    """Files as given, and every image file under the given folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out
