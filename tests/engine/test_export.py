"""`fromscratch export`: ONNX (run by onnxruntime on CPU) and TorchScript (torch.jit.load) files of trained
Mask R-CNN and Keypoint R-CNN checkpoints give PyTorch's detections on real images of two sizes.

The models train 20 iterations on fashion-scenes, so their scores are low and close together: the export
uses a score threshold just above the lowest per-image maximum of PyTorch's scores, in a clear gap
between them (1e-3 relative, ~1e4 x ONNX's score differences, so no score can flip across it and change
a count), which leaves one image with no detection (a case that once failed in ONNX Runtime) and the
others with some. Detections with equal scores may come out in another order, so they are paired by label and box.

Tolerances (absolute, after pairing) and the largest differences measured (ONNX Runtime 1.32, torch
2.14.1, CPU; here, and on random-init Mask, Keypoint, Cascade Mask and VGG-16 Faster R-CNNs while writing
this): boxes and keypoints 2e-3 px (7e-5 px here, 2.3e-4 px at most), scores 1e-5 (1.4e-7, 2.3e-6), mask
probabilities and keypoint scores 1e-3 (4e-5, 7.6e-5); labels and counts equal. TorchScript measured 0
(the same kernels), checked with the same tolerances.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fromscratch.cli import main
from fromscratch.config import load_config
from fromscratch.engine.export import ExportGroupNorm, outputs_of
from fromscratch.engine.inference import load_for_inference
from fromscratch.engine.trainer import train
from tests.conftest import prepared

TOL = {"boxes": 2e-3, "labels": 0, "scores": 1e-5, "masks": 1e-3, "keypoints": 2e-3, "keypoints_scores": 1e-3}
CONFIGS = {"mask_rcnn": "configs/fashion_scenes/cascade_mask_rcnn_scratch.yaml",
           "keypoint_rcnn": "configs/fashion_scenes/keypoint_rcnn_scratch.yaml"}


def real_images() -> list[torch.Tensor]:
    """Three fashion-scenes val images (256 x 256) and a trees val image cropped to 300 x 400: two sizes,
    float32 (3, H, W) in [0, 1] as the exported model takes them."""
    scenes = json.loads(prepared("fashion-scenes", "val.json").read_text())["images"][:3]
    trees = json.loads(prepared("trees", "val.json").read_text())["images"][0]
    arrays = [np.asarray(Image.open(prepared("fashion-scenes").parent / im["file_name"]).convert("RGB"))
              for im in scenes]
    arrays.append(np.asarray(Image.open(prepared("trees").parent / trees["file_name"]).convert("RGB"))[:300, :400])
    return [torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255) for a in arrays]


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    return real_images()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request, tmp_path_factory, images):
    """(checkpoint, score-threshold override, class names) of a short real run of one architecture."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = load_config(CONFIGS[request.param], [
        f"model.meta_arch={request.param}", "train.iterations=20", "train.steps=[15]", "train.warmup_iters=5",
        "train.checkpoint_period=20", "eval.max_images=2", "data.num_workers=0", "train.threads=1",
        "train.log_period=20", f"output_dir={out}"])  # 1 thread: 2 were 5x slower on a busy 2-core machine
    train(cfg)
    ckpt = out / "model_0000020.pth"
    model, names = load_for_inference(load_config(out / "config.yaml", ["model.roi.score_thresh=0"]), str(ckpt))
    with torch.no_grad():
        scores = [model([im])[0]["scores"].numpy() for im in images]
    lowest_max = min(float(s.max()) for s in scores)
    above = np.unique(np.concatenate(scores))
    above = above[above >= lowest_max]
    gaps = np.flatnonzero(np.diff(above) > 1e-3 * above[1:])  # relative gaps ~1e4 x ONNX's score differences
    assert len(gaps), "no clear gap above the lowest per-image maximum score for a threshold"
    thresh = (above[gaps[0]] + above[gaps[0] + 1]) / 2
    return request.param, ckpt, f"model.roi.score_thresh={thresh:.9f}", names


def reference(ckpt, override: str, images: list[torch.Tensor]) -> tuple[list[tuple[np.ndarray, ...]], tuple]:
    cfg = load_config(ckpt.parent / "config.yaml", [override])
    model = load_for_inference(cfg, str(ckpt))[0]
    names = outputs_of(cfg.model.meta_arch)
    with torch.no_grad():
        return [tuple(model([im])[0][k].numpy() for k in names) for im in images], names


def paired_diffs(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...], names: tuple[str, ...]) -> dict:
    """Largest |difference| per output, each exported detection paired with the reference one of the same
    label and nearest box (one to one)."""
    assert len(got) == len(ref) == len(names)
    assert len(got[0]) == len(ref[0]), f"{len(got[0])} detections exported, {len(ref[0])} from PyTorch"
    if not len(ref[0]):
        return dict.fromkeys(names, 0.0)
    dist = np.abs(got[0][:, None] - ref[0][None]).max(-1) + np.where(got[1][:, None] == ref[1][None], 0, np.inf)
    pair = dist.argmin(1)
    assert sorted(pair.tolist()) == list(range(len(pair))), "detections do not pair one to one"
    out = {}
    for name, r, g in zip(names, ref, got):
        assert r[pair].shape == g.shape and r.dtype == g.dtype, (name, r.shape, g.shape, r.dtype, g.dtype)
        out[name] = float(np.abs(r[pair].astype(np.float64) - g.astype(np.float64)).max())
    return out


def check_against_pytorch(run, ckpt, override, images) -> dict:
    refs, names = reference(ckpt, override, images)
    counts = [len(r[0]) for r in refs]
    assert 0 in counts and max(counts) > 0, counts  # the empty case and detections both checked
    worst = dict.fromkeys(names, 0.0)
    for image, ref in zip(images, refs):
        got = run(image)
        assert got[0].shape[1:] == (4,) and len({len(g) for g in got}) == 1  # one row per detection everywhere
        if "masks" in names:  # masks at the input image's size, whatever that is
            assert got[3].shape[2:] == tuple(image.shape[1:])
        for k, v in paired_diffs(ref, got, names).items():
            worst[k] = max(worst[k], v)
    for k, v in worst.items():
        assert v <= TOL[k], f"{k}: largest difference {v:.3g} > {TOL[k]}"
    print(f"\nlargest differences over {len(images)} images ({counts} detections): {worst}")
    return worst


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_and_matches_pytorch(trained, images, tmp_path, capsys):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install -e '.[export]')")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install -e '.[export]')")
    arch, ckpt, override, names = trained
    out = tmp_path / "det.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), override]) == 0
    printed = capsys.readouterr().out
    assert f"exported {arch}" in printed and "checked against PyTorch" in printed
    info = json.loads((tmp_path / "det.onnx.json").read_text())
    assert info["class_names"] == names and info["outputs"] == list(outputs_of(arch)) and info["opset"] == 17
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == list(outputs_of(arch))
    check_against_pytorch(lambda im: tuple(session.run(None, {"image": im.numpy()})), ckpt, override, images)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_with_torch_jit_and_matches_pytorch(trained, images, tmp_path, capsys):
    arch, ckpt, override, _ = trained
    assert main(["export", str(ckpt), "--format", "torchscript", override, "--no-check"]) == 0
    out = ckpt.with_name("model_0000020.torchscript.pt")  # the default: beside the checkpoint
    assert str(out) in capsys.readouterr().out
    module = torch.jit.load(str(out))

    def run(image):
        with torch.no_grad():
            return tuple(t.numpy() for t in module(image))

    check_against_pytorch(run, ckpt, override, images)


@pytest.mark.parametrize("shape", [(2, 64, 7, 9), (0, 64, 14, 14), (3, 64)])
def test_export_group_norm_equals_group_norm(shape):
    torch.manual_seed(0)
    gn = nn.GroupNorm(32, shape[1])
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(ExportGroupNorm(gn)(x), gn(x), atol=1e-5, rtol=1e-5)


def test_export_refusals(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pth"), "--format", "onnx"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    ckpt = tmp_path / "model_0000001.pth"
    torch.save({"model": {}}, ckpt)
    assert main(["export", str(ckpt), "--format", "torchscript"]) == 2
    assert "no config.yaml beside it" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--format", "onnx", "--config", "configs/models/cpu.yaml", "--out",
                 str(ckpt)]) == 2
    assert "the checkpoint itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), "--format", "tflite"])
