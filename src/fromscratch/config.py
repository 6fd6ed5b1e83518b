"""Typed configuration: YAML files with ``_base_`` inheritance and dotted command-line overrides.

Every key is declared in a pydantic model with ``extra="forbid"``: a typo is an error naming the key,
the file it came from and the closest valid key, not a silently ignored setting (detectron2's
CfgNode behaves the same way). YAML is read with ``safe_load`` only.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fromscratch.errors import ConfigError

NormName = Literal["GN", "SyncBN", "FrozenBN", "BN", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Dataset files and the training input pipeline: the paper's (short side 800, max 1333, flip only),
    or large-scale jitter with or without Copy-Paste (data/transforms.py)."""

    format: Literal["auto", "coco", "voc"] = "auto"  # auto: a folder or .txt is VOC, a .json is COCO
    train: str | list[str] | None = None  # COCO json or VOC folder / ImageSets .txt; a list is concatenated
    val: str | None = None
    image_root: str | None = None  # default: the folder of the json file
    subset: str | None = None  # an image-id list written by `fromscratch data subset`
    on_invalid: Literal["error", "skip"] = "error"
    check_images: bool = True  # open every image during validation (size, truncation)
    allow_outside_root: bool = False  # file names may not escape image_root unless allowed
    train_scales: list[int] = [800]
    scale_sampling: Literal["choice", "range"] = "choice"  # detectron2 MIN_SIZE_TRAIN_SAMPLING
    test_scale: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5  # every augmentation
    # standard: train_scales / scale_sampling / max_size + flip (the paper); lsj: large-scale jitter to a
    # lsj_size x lsj_size canvas + flip (detectron2's new baselines); lsj_copypaste: lsj + Simple Copy-Paste
    augmentation: Literal["standard", "lsj", "lsj_copypaste"] = "standard"
    lsj_size: int = 1024  # LSJ canvas side: images fit lsj_size x s, then a random crop / padding to the canvas
    lsj_scale: list[float] = [0.1, 2.0]  # [min, max] of s, drawn uniformly
    lsj_pad_value: int = 0  # the canvas' padding, 0-255 (detectron2 pads with 128, torchvision with its mean)
    copy_paste_prob: float = 0.5  # lsj_copypaste: chance that an image gets another's objects pasted on it
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    pack_records: bool = True  # records in one shared byte buffer (flat memory as loader workers and processes grow)


class BackboneConfig(_Strict):
    # resnet18..152, resnext50_32x4d, resnext101_32x8d, resnext152_32x8d, timm:<name>, imagenet:efficientnet_lite0
    name: str = "resnet50"
    norm: NormName = "GN"
    gn_groups: int = 32
    weights: str | None = None  # local file: None means init="scratch"
    freeze_at: int = 0  # the paper trains every layer; >0 with scratch init is refused
    force: bool = False  # build a scratch model with FrozenBN / freeze_at>0 anyway


class FPNConfig(_Strict):
    channels: int = 256
    norm: NormName = "GN"


class RPNConfig(_Strict):
    convs: int = 1
    anchor_sizes: list[int] = [32, 64, 128, 256, 512]  # one per FPN level P2-P6
    aspect_ratios: list[float] = [0.5, 1.0, 2.0]
    batch_size_per_image: int = 256
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 1000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 1000


class RoIConfig(_Strict):
    box_head: Literal["2fc", "4conv1fc"] = "4conv1fc"
    conv_dim: int = 256
    fc_dim: int = 1024
    norm: NormName = "GN"  # box, mask and keypoint heads
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    mask_head_convs: int = 4
    mask_head_dim: int = 256
    keypoint_head_dim: int = 512
    score_thresh: float = 0.05
    detections_per_img: int = 100
    cascade_ious: list[float] = [0.5, 0.6, 0.7]  # Cascade R-CNN stages (Cai & Vasconcelos; detectron2)
    cascade_stage_weights: list[float] = [1.0, 0.5, 0.25]


class ModelConfig(_Strict):
    meta_arch: Literal["mask_rcnn", "faster_rcnn", "keypoint_rcnn", "cascade_rcnn", "cascade_mask_rcnn"] = "mask_rcnn"
    num_classes: int | None = None  # default: the training set's categories
    num_keypoints: int = 17
    backbone: BackboneConfig = BackboneConfig()
    fpn: FPNConfig = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi: RoIConfig = RoIConfig()
    cascade_from_iter: int | None = None  # train as one stage until here, then the whole cascade (Table 3)
    pixel_mean: list[float] = [0.485, 0.456, 0.406]  # on [0, 1] inputs (torchvision's ImageNet values)
    pixel_std: list[float] = [0.229, 0.224, 0.225]


class TrainConfig(_Strict):
    """SGD and the paper's schedule rule (docs/paper.md, Schedules)."""

    batch_size: int = 16
    base_lr: float = 0.02  # at 16 images a batch; scaled linearly with batch_size
    # The run's length, first set wins: epochs, else iterations, else schedule. epochs and iterations
    # together are refused (cross_check); either one overrides schedule (whose default, 2x, is always set).
    schedule: str = "2x"  # "Nx" = N x 90k iterations at 16 images (rescaled, see engine/schedule.py)
    rescale_to_dataset: bool = True  # Nx means the same epochs on any dataset
    # 1x = this many iterations at any batch and data size (drops in the last 2/3 and 2/9 of 1x, as the
    # paper's 60k/20k of 90k); the paper's small-data runs kept iteration counts, not epochs. None: 90k at 16
    # images a batch, rescaled to the batch and (rescale_to_dataset) the dataset
    x_iterations: int | None = Field(default=None, gt=0)
    epochs: float | None = None  # passes over the training set: iterations = ceil(epochs x images / batch_size)
    iterations: int | None = None  # explicit length in iterations
    # The LR drops, first set wins: steps, else step_fractions, else the paper's rule (the rescaled last 60k
    # and 20k iterations of Nx, counted back from the end of the run); steps and step_fractions together
    # are refused (cross_check).
    steps: list[int] | None = None  # explicit LR drop iterations
    step_fractions: list[float] | None = None  # drops as fractions of the run, increasing in (0, 1): [0.889, 0.963]
    decay_factor: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    clip_grad_norm: float | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_period: int = 20
    eval_period: int = 0  # 0: evaluate only at the end
    checkpoint_period: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    checkpoint_at: list[int] = []  # extra checkpoints kept whatever keep_checkpoints says (study branch points)
    seed: int = 0
    threads: int | None = None
    skip_nonfinite_steps: bool = False
    # early stopping on val AP (first IoU type): stop after this many evaluations without a gain of more
    # than early_stop_min_delta, never before early_stop_grace x the run's iterations (0: off)
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    early_stop_grace: float = 0.5
    device: str = "auto"


class EvalConfig(_Strict):
    backend: Literal["faster_coco_eval", "pycocotools"] = "faster_coco_eval"
    tta: bool = False  # test-time augmentation (evaluation/tta.py)
    tta_scales: list[int] = [400, 500, 600, 700, 800, 900, 1000, 1100, 1200]
    tta_flip: bool = True
    max_images: int | None = None


class PretrainConfig(_Strict):
    """The pre-training stage: classification (the paper's "ImageNet" stage, at our scale), or
    self-supervised on unlabeled images (study/ssl.py)."""

    method: Literal["supervised", "simclr", "byol"] = "supervised"
    # supervised: "fashion-mnist" or an ImageNet-style folder with train/<class>/*.jpg; simclr/byol:
    # "data.train" (the run's training images, labels ignored) or a folder of unlabeled images
    source: str = "fashion-mnist"
    image_size: int = 32
    min_scale: float = 0.08  # simclr/byol: smallest random crop, as a fraction of the image's area
    epochs: float = 1.0
    max_images: int | None = None  # a seeded subset of the source's training images
    val_images: int = 2000  # held out from the source's train split for top-1
    batch_size: int = 64
    lr: float = 0.05  # 0.1 and up diverge for R18-GN from scratch at batch 64 here
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    seed: int = 0
    output: str = "runs/pretrain"


class MLflowConfig(_Strict):
    enabled: bool = False
    tracking_uri: str | None = None  # None: MLflow's default (MLFLOW_TRACKING_URI, else a local store)
    experiment: str = "fromscratch"
    run_name: str | None = None  # None: the output_dir's folder name (a study's run name)


class WandbConfig(_Strict):
    enabled: bool = False
    project: str = "fromscratch"
    entity: str | None = None
    mode: Literal["offline", "online"] = "offline"  # offline: files only; `wandb sync` uploads them later
    dir: str | None = None  # None: the run folder (W&B writes its wandb/ subfolder there)
    run_name: str | None = None  # None: the output_dir's folder name


class TrackingConfig(_Strict):
    """Experiment trackers (engine/trackers.py) beside metrics.jsonl and TensorBoard, each an extra
    (``pip install -e '.[mlflow]'``, ``'.[wandb]'``); nothing of theirs is imported while off."""

    mlflow: MLflowConfig = MLflowConfig()
    wandb: WandbConfig = WandbConfig()
    tags: dict[str, str | int | float | bool] = {}  # a study's runs get study, arm, size, schedule, seed


def has_masks(meta_arch: str) -> bool:
    return meta_arch in ("mask_rcnn", "cascade_mask_rcnn")


class SlurmConfig(_Strict):
    """One SLURM job per run (submitit): what ``fromscratch train --slurm`` and a study with
    ``executor: slurm`` ask the scheduler for. One task per GPU (``tasks_per_node`` = ``gpus_per_node``),
    each a training process; rendezvous from the SLURM environment (the first node is the master)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU job
    tasks_per_node: int | None = None  # default: gpus_per_node, or 1 on CPU
    cpus_per_task: int = 1
    mem_gb: float | None = None  # None: the partition's default
    time_min: int = 1440  # the job's time limit; a run that hits it is checkpointed and requeued
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: list[str] = []  # more #SBATCH options, e.g. ["--exclusive", "--reservation=detection"]
    setup: list[str] = []  # shell lines run before the job (module load ..., source venv/bin/activate)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint, then requeue
    max_requeues: int = 10  # time-outs and preemptions a run may be requeued after
    poll_s: float = 30.0  # how often a waiting study looks at the queue


class Config(_Strict):
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig = SlurmConfig()
    output_dir: str = "runs/default"
    description: str = ""


# ---------------------------------------------------------------------------------- loading


# A config or study file is a few hundred values; YAML aliases can make a 1 KB file expand to billions
# (nine levels of nine references). Files are refused beyond this many values after alias expansion,
# counted without expanding anything, before any code walks the tree.
MAX_YAML_VALUES = 100_000


def expanded_size(obj: Any, limit: int = MAX_YAML_VALUES) -> int:
    """How many values ``obj`` holds once every alias is expanded (a shared sub-tree counts each time
    it is referenced), computed once per distinct object; a tree that contains itself counts as
    ``limit + 1``."""
    memo: dict[int, int] = {}

    def size(o: Any) -> int:
        if not isinstance(o, (dict, list)):
            return 1
        if id(o) in memo:
            return memo[id(o)]
        memo[id(o)] = limit + 1  # seen again before it is done: the tree contains itself
        items = [x for kv in o.items() for x in kv] if isinstance(o, dict) else o
        total = 1
        for x in items:
            total += size(x)
            if total > limit:
                break
        memo[id(o)] = min(total, limit + 1)
        return memo[id(o)]

    return size(obj)


def load_yaml(path: Path, what: str = "config file") -> Any:
    """A YAML file read with ``safe_load``, with every failure a ``ConfigError`` naming the file: syntax
    (line and column), nesting too deep, or more than ``MAX_YAML_VALUES`` values after aliases."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{pos}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a {what}") from None
    if expanded_size(data) > MAX_YAML_VALUES:
        raise ConfigError(f"{path}: refused: its YAML aliases (&name / *name) expand to more than "
                          f"{MAX_YAML_VALUES:,} values, or to a tree that contains itself; a {what} holds a few "
                          "hundred. Write the values out instead of nesting aliases.")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict, origin: dict[str, str], source: str, prefix: str = "") -> dict:
    """Deep-merge ``over`` into ``base``; record which file set each dotted key."""
    out = dict(base)
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origin, source, dotted + ".")
        else:
            out[key] = value
            _mark(value, dotted, origin, source)
    return out


def _mark(value: Any, dotted: str, origin: dict[str, str], source: str) -> None:
    origin[dotted] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, f"{dotted}.{k}", origin, source)


def _load_tree(path: Path, origin: dict[str, str], seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, seen))}")
    raw = _read_yaml(path)
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:  # the recursive call marks each inherited key with its base file
        merged = _merge(merged, _load_tree(path.parent / b, origin, seen + (path,)), {}, "")
    return _merge(merged, raw, origin, str(path))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.base_lr=0.04`` -> (["train", "base_lr"], 0.04); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. train.base_lr=0.04")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if expanded_size(value) > MAX_YAML_VALUES:
        raise ConfigError(f"override '{key}': its YAML aliases expand to more than {MAX_YAML_VALUES:,} values")
    return key.strip().split("."), value


def _set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (following ``_base_``), apply dotted overrides, validate."""
    origin: dict[str, str] = {}
    tree = _load_tree(Path(path), origin) if path else {}
    for item in overrides:
        keys, value = parse_override(item)
        _set_dotted(tree, keys, value)
        _mark(value, ".".join(keys), origin, "command line")
    return config_from_dict(tree, origin, default_source=str(path) if path else "command line")


def config_from_dict(tree: dict, origin: dict[str, str] | None = None, default_source: str = "config") -> Config:
    origin = origin or {}
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e, origin, default_source)) from None
    problems = cross_check(cfg)
    if problems:
        lines = [f"{origin.get(key, default_source)}: key '{key}' = {_get(cfg, key)!r}: {msg}" for key, msg in problems]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    return cfg


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def cross_check(cfg: Config) -> list[tuple[str, str]]:
    """(key, problem) for settings that are each valid but do not fit together: found at load time,
    not in a loader worker or at the model build hours later."""
    d, t, m = cfg.data, cfg.train, cfg.model
    out: list[tuple[str, str]] = []
    if d.scale_sampling == "range" and len(d.train_scales) != 2:
        out.append(("data.train_scales", f"data.scale_sampling='range' samples a short side uniformly in "
                                         f"[min, max], so it needs exactly 2 values, got {len(d.train_scales)}"))
    if not d.train_scales or min(d.train_scales) <= 0:
        out.append(("data.train_scales", "needs at least one short side, each > 0"))
    if len(d.lsj_scale) != 2 or not 0 < d.lsj_scale[0] <= d.lsj_scale[1] < float("inf"):
        out.append(("data.lsj_scale", "LSJ draws its scale uniformly in [min, max]: exactly 2 values with "
                                      "0 < min <= max, e.g. [0.1, 2.0]"))
    if not 0 <= d.lsj_pad_value <= 255:
        out.append(("data.lsj_pad_value", "a grey level of the uint8 image, in [0, 255]"))
    if not 0 <= d.copy_paste_prob <= 1:
        out.append(("data.copy_paste_prob", "a probability, in [0, 1]"))
    for key, value in (("train.batch_size", t.batch_size), ("data.test_scale", d.test_scale),
                       ("data.lsj_size", d.lsj_size),
                       ("data.max_size", d.max_size), ("train.log_period", t.log_period)):
        if value <= 0:
            out.append((key, "must be > 0"))
    if t.steps is not None and (sorted(t.steps) != t.steps or (t.iterations is not None and t.steps and
                                                                t.steps[-1] >= t.iterations)):
        out.append(("train.steps", f"LR drops must be increasing and before train.iterations={t.iterations}"))
    if t.epochs is not None and t.iterations is not None:
        out.append(("train.epochs", f"train.epochs={t.epochs:g} and train.iterations={t.iterations} both set the "
                                    "run's length: set one of them to null"))
    if t.epochs is not None and not 0 < t.epochs < float("inf"):
        out.append(("train.epochs", "must be a number > 0 (or null: the length is then train.iterations or "
                                    "train.schedule)"))
    if t.iterations is not None and t.iterations <= 0:
        out.append(("train.iterations", "must be > 0 (or null: the length is then train.schedule)"))
    if t.steps is not None and t.step_fractions is not None:
        out.append(("train.step_fractions", f"train.steps={t.steps} and train.step_fractions={t.step_fractions} "
                                            "both set the LR drops: set one of them to null"))
    fr = t.step_fractions or []
    if any(not 0 < f < 1 for f in fr) or any(a >= b for a, b in zip(fr, fr[1:])):
        out.append(("train.step_fractions", "LR drops as fractions of the run must be strictly increasing and "
                                            "inside (0, 1), e.g. [0.889, 0.963]"))
    if t.early_stop_patience and (cfg.train.eval_period <= 0 or not d.val):
        out.append(("train.early_stop_patience", "needs periodic evaluation (train.eval_period > 0 and data.val)"))
    if not 0 <= t.early_stop_grace <= 1:
        out.append(("train.early_stop_grace", "a fraction of the run's iterations, in [0, 1]"))
    if t.amp == "fp16" and t.device == "cpu":
        out.append(("train.amp", "fp16 needs CUDA (GradScaler); use train.amp=bf16 on CPU"))
    cascade = m.meta_arch.startswith("cascade")
    if cascade and len(m.roi.cascade_stage_weights) != len(m.roi.cascade_ious):
        out.append(("model.roi.cascade_stage_weights", f"{len(m.roi.cascade_stage_weights)} values for "
                                                       f"{len(m.roi.cascade_ious)} stages (model.roi.cascade_ious)"))
    if m.cascade_from_iter is not None and not cascade:
        out.append(("model.cascade_from_iter", f"only for a cascade meta_arch, not {m.meta_arch!r}"))
    if m.backbone.name != "vgg16" and len(m.rpn.anchor_sizes) != 5:
        out.append(("model.rpn.anchor_sizes",
                    f"one size per FPN level P2-P6 (5 values), got {len(m.rpn.anchor_sizes)}"))
    if cfg.eval.max_images is not None and cfg.eval.max_images <= 0:
        out.append(("eval.max_images", "must be > 0 (or null for all images)"))
    return out


def _explain(err: ValidationError, origin: dict[str, str], default_source: str) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        dotted = ".".join(loc)
        source = origin.get(dotted, default_source)
        if item["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.4)
            hint = f"; did you mean '{'.'.join(loc[:-1] + close)}'?" if close else ""
            lines.append(f"{source}: unknown key '{dotted}'{hint} (valid keys here: {', '.join(valid)})")
        else:
            value = item.get("input")
            lines.append(f"{source}: key '{dotted}' = {value!r}: {item['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


# Keys a resumed run may change (docs/design.md, "Resuming"): its length and LR drops (a longer schedule),
# how often it logs, evaluates and checkpoints, how it is evaluated, the machine it runs on, and the
# two switches the divergence message suggests (clip_grad_norm, skip_nonfinite_steps). Any
# other difference means another experiment, and --resume refuses it. A key ending in ".*" covers a block.
RESUME_MAY_CHANGE = ("output_dir", "description", "train.schedule", "train.iterations", "train.steps",
                     "train.epochs", "train.step_fractions", "train.x_iterations",
                     "train.log_period", "train.eval_period", "train.checkpoint_period", "train.keep_checkpoints",
                     "train.checkpoint_at", "train.early_stop_patience", "train.early_stop_min_delta",
                     "train.early_stop_grace", "train.clip_grad_norm",
                     "train.skip_nonfinite_steps", "train.threads", "train.device", "train.amp", "data.num_workers",
                     "data.check_images", "data.pack_records", "eval.*", "pretrain.*", "tracking.*", "slurm.*")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def may_change_on_resume(key: str) -> bool:
    return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in RESUME_MAY_CHANGE)


def config_changes(saved: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) for every key where ``cfg`` differs from a run folder's saved
    config (a saved tree from an older version is completed with today's defaults)."""
    try:
        saved = Config.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass  # keys this version no longer knows: compare what both have
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `config show` prints and a run folder stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
