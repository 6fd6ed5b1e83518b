import pytest

from fromscratch.config import load_config
from fromscratch.errors import ConfigError


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {base_lr: 0.02, batch_size: 16}\nmodel: {backbone: {name: resnet50}}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {batch_size: 2}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.base_lr=0.04", "data.train_scales=[640,800]"])
    assert cfg.train.batch_size == 2  # child wins over base
    assert cfg.train.base_lr == 0.04  # command line wins over files
    assert cfg.model.backbone.name == "resnet50"  # inherited
    assert cfg.data.train_scales == [640, 800]


def test_unknown_key_names_key_file_and_closest(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.1}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    msg = str(e.value)
    assert "train.lr" in msg and "base.yaml" in msg and "did you mean 'train.base_lr'" in msg


def test_unknown_override_is_from_command_line(tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown key 'model.backbone.nrom'.*model.backbone.norm"):
        load_config(None, ["model.backbone.nrom=GN"])


def test_wrong_type_names_key_value_and_type(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {batch_size: two}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert "train.batch_size" in str(e.value) and "'two'" in str(e.value) and "integer" in str(e.value)


def test_yaml_syntax_error_has_line(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(tmp_path / "c.yaml")


def test_yaml_is_safe_loaded(tmp_path):
    (tmp_path / "c.yaml").write_text("description: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.yaml")


def test_norm_choices_are_checked():
    with pytest.raises(ConfigError, match="model.backbone.norm"):
        load_config(None, ["model.backbone.norm=LayerNorm"])


def test_range_sampling_with_one_scale_is_refused_at_load(tmp_path, capsys):
    """A cross-field mistake inherited from a base file fails at load, naming the key, file and value,
    before any data is read or model built (it used to crash later in a loader worker)."""
    from fromscratch.cli import main

    (tmp_path / "base.yaml").write_text("data: {scale_sampling: range, train_scales: [96, 128]}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ndata: {train_scales: [224], train: nope.json}\n"
                                         f"output_dir: {tmp_path / 'run'}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    msg = str(e.value)
    assert f"{tmp_path / 'child.yaml'}: key 'data.train_scales' = [224]" in msg and "exactly 2 values" in msg
    assert main(["train", str(tmp_path / "child.yaml")]) == 2
    err = capsys.readouterr().err
    assert "data.train_scales" in err and "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.parametrize("over,key", [
    (["train.steps=[30,20]"], "train.steps"), (["train.iterations=10", "train.steps=[10]"], "train.steps"),
    (["train.amp=fp16", "train.device=cpu"], "train.amp"),
    (["model.rpn.anchor_sizes=[32,64]"], "model.rpn.anchor_sizes"),
    (["model.meta_arch=cascade_rcnn", "model.roi.cascade_stage_weights=[1.0]"], "model.roi.cascade_stage_weights"),
    (["model.cascade_from_iter=5"], "model.cascade_from_iter"), (["train.batch_size=0"], "train.batch_size")])
def test_other_cross_field_checks(over, key):
    with pytest.raises(ConfigError, match=f"command line: key '{key}'"):
        load_config("configs/models/cpu.yaml", over)


@pytest.mark.parametrize("argv", [
    ["eval", "configs/models/cpu.yaml", "--weights", "w.pth", "output_dir=X", "--out", "o", "data.test_scale=64"],
    ["train", "configs/models/cpu.yaml", "--resume", "output_dir=X", "data.test_scale=64"],
    ["schedule", "configs/models/cpu.yaml", "--dataset-size", "10", "output_dir=X", "data.test_scale=64"],
    ["predict", "configs/models/cpu.yaml", "img.png", "output_dir=X", "--weights", "w.pth", "--out", "o",
     "data.test_scale=64"]])
def test_overrides_anywhere_after_the_config(argv):
    from fromscratch.cli import parse_args

    args = parse_args(argv)
    assert args.overrides == ["output_dir=X", "data.test_scale=64"]
    if argv[0] == "predict":
        assert args.images == ["img.png"]


def test_unknown_option_still_refused(capsys):
    from fromscratch.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["eval", "configs/models/cpu.yaml", "--weights", "w.pth", "--nope"])
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
