"""Bad input never costs a run: random and mutated COCO json and config YAML give a valid dataset or
config, or our own error; divergence stops the run with what a user needs; nothing unsafe loads."""
import copy
import json
import math
import os
import pickle

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fromscratch.config import load_config
from fromscratch.data.coco import load_coco
from fromscratch.engine.checkpoint import load_checkpoint
from fromscratch.engine.trainer import train
from fromscratch.errors import ConfigError, DataError, FromScratchError
from fromscratch.models.init import read_state_dict
from tests.conftest import make_coco

JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10_000) | st.floats(allow_nan=True)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    path = make_coco(root, num_images=2)
    return root, json.loads(path.read_text())


@settings(max_examples=int(os.environ.get("FROMSCRATCH_FUZZ", 150)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_coco_gives_dataset_or_our_error(base, data):
    root, original = base
    doc = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        node = doc
        for k in path[:-1]:
            node = node[k]
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(JSON)
        elif isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    target = root / "mutated.json"
    target.write_text(json.dumps(doc))
    try:
        ds = load_coco(target)
    except DataError as e:
        assert str(target) in str(e)
        return
    for r in ds.records:  # what loads must be usable: boxes finite, masks decode
        assert all(math.isfinite(float(v)) for v in r.boxes.reshape(-1))
        if r.segmentations is not None:
            r.masks()


@settings(max_examples=100, deadline=None)
@given(json_doc=JSON)
def test_random_json_gives_our_error(tmp_path_factory, json_doc):
    path = tmp_path_factory.mktemp("rand") / "x.json"
    path.write_text(json.dumps(json_doc))
    with pytest.raises(DataError):
        load_coco(path)


KEYS = ["train.base_lr", "train.batch_size", "train.schedule", "model.backbone.norm", "model.backbone.name",
        "data.train_scales", "data.flip_prob", "model.roi.box_head", "nope", "train.nope", "model.fpn"]


@settings(max_examples=150, deadline=None)
@given(tree=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4))
def test_random_config_gives_config_or_our_error(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    nested: dict = {}
    for dotted, value in tree.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(nested))
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_random_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/fromscratch-pwned",))


def test_code_carrying_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(FromScratchError, match="weights_only=True"):
        read_state_dict(path)
    with pytest.raises(FromScratchError, match="weights_only=True"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/fromscratch-pwned")


DIVERGE = ["model.backbone.name=resnet18", "model.backbone.norm=none", "model.fpn.norm=none", "model.roi.norm=none",
           "train.base_lr=1e7", "train.warmup_iters=0", "train.iterations=6", "train.steps=[5]",
           "data.train_scales=[64]", "data.test_scale=64", "data.max_size=96", "data.num_workers=0",
           "train.log_period=1"]


@pytest.mark.slow
def test_divergence_stops_with_details_and_last_good_state(tmp_path):
    ann = make_coco(tmp_path / "data", num_images=2)
    cfg = load_config("configs/models/cpu.yaml", DIVERGE + [f"data.train={ann}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(FromScratchError) as e:
        train(cfg)
    msg = str(e.value)
    for part in ("non-finite loss at iteration", "loss_classifier=", "lr=", "images [", "Last good state saved to",
                 "no normalization", "warm-up"):
        assert part in msg, msg
    assert list((tmp_path / "run").glob("model_*.pth"))


@pytest.mark.slow
def test_skip_nonfinite_steps_keeps_going(tmp_path, capsys):
    ann = make_coco(tmp_path / "data", num_images=2)
    cfg = load_config("configs/models/cpu.yaml", DIVERGE + [f"data.train={ann}", f"output_dir={tmp_path / 'run'}",
                                                            "train.skip_nonfinite_steps=true"])
    result = train(cfg)
    assert result["iterations"] == 6 and "step skipped" in capsys.readouterr().out


def test_missing_data_path_and_foreign_subset(tmp_path):
    from fromscratch.data.sources import load_dataset

    with pytest.raises(DataError, match="nope.json: dataset not found"):
        load_dataset(str(tmp_path / "nope.json"))
    ann = make_coco(tmp_path, num_images=2)
    (tmp_path / "sub.json").write_text('{"image_ids": [1, 77]}')
    with pytest.raises(DataError, match=r"sub.json: 1 image id\(s\) are not in .*first: \[77\]"):
        load_dataset(str(ann), subset=str(tmp_path / "sub.json"))
