"""Test-time augmentation: one scale without flip equals plain inference; several scales and flips
give detections and averaged masks in original coordinates."""
import torch

from fromscratch.config import load_config
from fromscratch.evaluation.tta import TTASpec, tta_predict, vote
from fromscratch.models.build import build_model


def _model(*extra):
    torch.manual_seed(0)
    cfg = load_config("configs/models/cpu.yaml", ["data.test_scale=96", "data.max_size=160",
                                                  "model.roi.score_thresh=0.0", *extra])
    return build_model(cfg, 3).eval()


def test_single_scale_no_flip_is_plain_inference():
    model = _model()
    img = torch.rand(3, 80, 100)
    with torch.no_grad():
        plain = model([img])[0]
    tta = tta_predict(model, img, TTASpec([96], False, 160, 96))
    assert len(plain["boxes"]) > 0
    torch.testing.assert_close(tta["boxes"], plain["boxes"])
    torch.testing.assert_close(tta["scores"], plain["scores"])
    torch.testing.assert_close(tta["masks"], plain["masks"], atol=1e-5, rtol=1e-5)
    assert model.transform.min_size == (96,)  # restored


def test_scales_and_flips():
    model = _model()
    out = tta_predict(model, torch.rand(3, 80, 100), TTASpec([64, 96, 128], True, 160, 96))
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) <= model.roi_heads.detections_per_img
    assert out["masks"].shape[-2:] == (80, 100)
    assert (out["boxes"][:, 2] <= 100 + 1e-3).all()


def test_box_voting():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11], [50.0, 50, 60, 60]])
    out = vote(kept, torch.tensor([1]), boxes, torch.tensor([0.5, 0.5, 0.9]), torch.tensor([1, 1, 1]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0, 10, 10.5]]))
