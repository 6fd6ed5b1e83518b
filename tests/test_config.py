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
