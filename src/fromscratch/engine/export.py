"""`fromscratch export`: a trained detector as one ONNX or TorchScript file that runs without fromscratch.

The exported model takes ONE image, a float32 tensor (3, H, W), RGB, values in [0, 1] (what ``predict``
feeds the model; ``uint8 / 255``), of any height and width: it resizes to ``data.test_scale`` /
``data.max_size`` and normalizes inside, as the PyTorch model does, and returns a tuple of tensors in
the input image's pixels (names in ``outputs_of``):

    boxes (N, 4) float32 x0, y0, x1, y1 · labels (N,) int64, 1-based (class_names[label - 1]) ·
    scores (N,) float32, sorted high to low, >= model.roi.score_thresh
    masks (N, 1, H, W) float32 probabilities (Mask R-CNN; threshold 0.5 as ``predict`` does)
    keypoints (N, K, 3) float32 x, y, 1 · keypoints_scores (N, K) float32 (Keypoint R-CNN)

Both formats are traced (torch.jit.trace, and the TorchScript-based ONNX exporter, ``dynamo=False``,
opset 17; the dynamo exporter is not used) through torchvision's tracing paths, so image sizes and
detection counts stay dynamic (tests/engine/test_export.py runs both on real images of two sizes). For
ONNX, the RoI heads' GroupNorm layers are swapped for an equal formulation without a ``-1`` reshape:
torch exports GroupNorm with one, which ONNX Runtime cannot apply to an empty tensor, so an image with
no detections failed in the mask and keypoint heads. A ``FILE.json`` beside the file records the input,
the outputs and the class names. Test-time augmentation (``eval.tta``) is not part of the export.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fromscratch.config import Config, has_masks
from fromscratch.engine.inference import load_for_inference
from fromscratch.errors import FromScratchError
from fromscratch.utils import atomic_write_text

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
OPSET = 17
INPUT = "image: float32 (3, H, W), RGB, values in [0, 1], any H and W"


def outputs_of(meta_arch: str) -> tuple[str, ...]:
    """Names of the exported model's outputs, in order, for ``model.meta_arch``."""
    names: tuple[str, ...] = ("boxes", "labels", "scores")
    if has_masks(meta_arch):
        names += ("masks",)
    if meta_arch == "keypoint_rcnn":
        names += ("keypoints", "keypoints_scores")
    return names


class SingleImageDetector(nn.Module):
    """A GeneralizedRCNN in eval mode as ``image (3, H, W) -> (boxes, labels, scores, ...)``."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detections = self.model([image])[0]
        return tuple(detections[k] for k in self.outputs)


class ExportGroupNorm(nn.Module):
    """``nn.GroupNorm`` with every reshape spelled out (no ``-1``), so the ONNX graph also runs on an empty
    batch (zero detections reaching the mask or keypoint head)."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.num_channels, self.eps = gn.num_groups, gn.num_channels, gn.eps
        self.weight, self.bias = gn.weight, gn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        g = self.num_groups
        y = x.reshape(shape[0], g, self.num_channels // g, *shape[2:])
        dims = tuple(range(2, y.dim()))
        mean = y.mean(dims, keepdim=True)
        var = (y - mean).pow(2).mean(dims, keepdim=True)
        y = ((y - mean) / torch.sqrt(var + self.eps)).reshape(shape)
        if self.weight is not None:
            affine = (1, self.num_channels) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(affine) + self.bias.reshape(affine)
        return y


def swap_group_norms(module: nn.Module) -> int:
    """Replace every ``nn.GroupNorm`` under ``module`` by ``ExportGroupNorm`` (same parameters); the count."""
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, ExportGroupNorm(child))
            n += 1
        else:
            n += swap_group_norms(child)
    return n


def run_config(checkpoint: str | Path) -> Path:
    """The ``config.yaml`` of the run folder a checkpoint lies in."""
    ck = Path(checkpoint)
    if not ck.is_file():
        raise FromScratchError(f"{ck}: no such checkpoint file")
    path = ck.parent / "config.yaml"
    if not path.is_file():
        raise FromScratchError(f"{ck}: no config.yaml beside it (a run folder has one); give the model's config "
                               "with --config")
    return path


def default_out(checkpoint: str | Path, fmt: str) -> Path:
    """``model_0000600.pth`` -> ``model_0000600.onnx`` / ``model_0000600.torchscript.pt`` beside it."""
    ck = Path(checkpoint)
    return ck.with_name(ck.stem + SUFFIX[fmt])


def example_image(cfg: Config) -> torch.Tensor:
    """The image the model is traced with: seeded noise, not square (so no height/width mix-up can hide),
    of the test size. Its content does not matter: the graph keeps sizes and detection counts dynamic."""
    h = cfg.data.test_scale
    w = min(cfg.data.max_size, round(h * 4 / 3))
    gen = torch.Generator().manual_seed(0)
    return torch.rand(3, h, w, generator=gen)


def export_model(cfg: Config, weights: str, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write ``weights`` (a checkpoint or state dict of ``cfg.model``) as ``fmt`` to ``out``, with
    ``out + '.json'`` describing input, outputs and class names."""
    if fmt not in FORMATS:
        raise FromScratchError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter serializes with it)
        except ImportError as e:
            raise FromScratchError("--format onnx needs the onnx package: pip install 'fromscratch[export]'") from e
    model, names = load_for_inference(cfg, weights)
    outputs = outputs_of(cfg.model.meta_arch)
    wrapper = SingleImageDetector(model, outputs).eval()
    example = example_image(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    start = time.perf_counter()
    # torch.jit.trace and the ONNX exporter warn on every Python number taken from a shape in torchvision's
    # detection code, and on their own deprecation: expected here; the tests check the outputs instead
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(wrapper, (example,), check_trace=False), str(tmp))
            else:
                swap_group_norms(wrapper.model.roi_heads)
                torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                                  input_names=["image"], output_names=list(outputs),
                                  dynamic_axes={"image": {1: "height", 2: "width"},
                                                **{k: {0: "detections"} for k in outputs}})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    info = {"format": fmt, "file": str(out), "meta_arch": cfg.model.meta_arch, "weights": str(weights),
            "input": INPUT, "outputs": list(outputs), "class_names": names,
            "score_thresh": cfg.model.roi.score_thresh, "detections_per_img": cfg.model.roi.detections_per_img,
            "test_scale": cfg.data.test_scale, "max_size": cfg.data.max_size,
            **({"opset": OPSET} if fmt == "onnx" else {})}
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(info, indent=1))
    return {**info, "bytes": out.stat().st_size, "seconds": time.perf_counter() - start}


def load_exported(path: str | Path):
    """A callable ``image (3, H, W) float tensor -> tuple of numpy arrays`` running an exported file:
    onnxruntime (CPU) for ``.onnx``, torch.jit.load otherwise."""
    path = Path(path)
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise FromScratchError("onnxruntime is not installed: pip install 'fromscratch[export]'") from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda image: tuple(session.run(None, {"image": image.numpy()}))
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(image: torch.Tensor) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(t.numpy() for t in module(image))

    return run


def match_detections(ref_boxes: np.ndarray, ref_labels: np.ndarray, boxes: np.ndarray,
                     labels: np.ndarray) -> np.ndarray:
    """For each exported detection, the index of the reference detection it is: same label, nearest box.
    Needed because detections with (nearly) equal scores may come out in another order."""
    if len(boxes) != len(ref_boxes):
        raise AssertionError(f"{len(boxes)} detections exported, {len(ref_boxes)} from PyTorch")
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    dist = np.abs(boxes[:, None, :] - ref_boxes[None, :, :]).max(-1)
    dist[labels[:, None] != ref_labels[None, :]] = np.inf
    order = dist.argmin(1)
    if len(set(order.tolist())) != len(order):
        raise AssertionError("exported detections do not pair one to one with PyTorch's")
    return order


def compare(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...], outputs: tuple[str, ...]) -> dict[str, float]:
    """Largest absolute difference per output between PyTorch's and an exported model's detections of one
    image, detections paired by ``match_detections``; raises AssertionError on a count or shape mismatch."""
    order = match_detections(ref[0], ref[1], got[0], got[1])
    diffs = {}
    for name, r, g in zip(outputs, ref, got):
        r = r[order]
        if r.shape != g.shape:
            raise AssertionError(f"{name}: shape {g.shape} exported, {r.shape} from PyTorch")
        diffs[name] = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()) if r.size else 0.0
    return diffs


def check_export(cfg: Config, weights: str, path: str | Path,
                 images: list[torch.Tensor]) -> tuple[dict[str, float], int]:
    """Largest differences between the exported file and the PyTorch model over ``images``, and the number
    of detections compared."""
    model = load_for_inference(cfg, weights)[0]
    outputs = outputs_of(cfg.model.meta_arch)
    wrapper = SingleImageDetector(model, outputs).eval()
    run = load_exported(path)
    worst, count = dict.fromkeys(outputs, 0.0), 0
    for image in images:
        with torch.no_grad():
            ref = tuple(t.numpy() for t in wrapper(image))
        count += len(ref[0])
        for k, v in compare(ref, run(image), outputs).items():
            worst[k] = max(worst[k], v)
    return worst, count


def self_check(cfg: Config, weights: str, path: str | Path) -> dict[str, Any] | None:
    """The exported file against PyTorch on the trace image and one of another size (its transpose);
    None when the ONNX runtime is not installed."""
    if Path(path).suffix == ".onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None
    images = [example_image(cfg), example_image(cfg).transpose(1, 2).contiguous()]
    worst, count = check_export(cfg, weights, path, images)
    return {"sizes": [tuple(im.shape[1:]) for im in images], "max_diff": worst, "detections": count}
