"""Fault injection: what storage, schedulers and users do to a run (docs/design.md, "When something goes
wrong"). Each case kills, truncates, fills or races at a chosen point of a real training process and
asserts that the run resumes to the same final weights as an uninterrupted one, or stops with a named
cause (exit 2, never an internal error)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fromscratch.engine.checkpoint import load_checkpoint
from fromscratch.engine.logging import read_metrics_lines
from fromscratch.errors import FromScratchError, RunLocked, StorageError
from fromscratch.utils import FolderLock, append_line
from tests.conftest import ROOT, make_coco

TINY = ["model.backbone.name=resnet18", "model.meta_arch=faster_rcnn", "data.train_scales=[64]",
        "data.test_scale=64", "data.max_size=96", "data.num_workers=0", "train.threads=1", "train.log_period=1",
        "train.iterations=6", "train.steps=[4]", "train.warmup_iters=2", "train.checkpoint_period=2",
        "train.keep_checkpoints=5"]

# Runs the CLI in a subprocess with one fault armed (the spec is JSON in argv[1]); nothing in the
# package knows about it: the fault is a wrapper around the package's own functions.
DRIVER = r"""
import json, os, resource, signal, sys
spec = json.loads(sys.argv[1])
from fromscratch import cli
from fromscratch.engine import checkpoint
def ckpt_name(k): return f"model_{k:07d}.pth"
if "kill_after_checkpoint" in spec:
    save = checkpoint.save_checkpoint
    def saving(path, state):
        save(path, state)
        if state.get("iteration") == spec["kill_after_checkpoint"]:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_checkpoint = saving
if "kill_writing_checkpoint" in spec:  # the temp file is complete, the rename never happens
    replace = os.replace
    def replacing(src, dst):
        if os.path.basename(dst) == ckpt_name(spec["kill_writing_checkpoint"]):
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
    os.replace = replacing
if "file_size_limit" in spec:  # as `ulimit -f`: writes past it fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_size_limit"], spec["file_size_limit"]))
sys.exit(cli.main(sys.argv[2:]))
"""


def run_cli(args: list[str], fault: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with ``fault`` armed; its log and errors together in ``.stdout``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(fault or {}), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "configs/models/cpu.yaml", *TINY, f"data.train={data}", f"output_dir={out}", *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def losses(run: Path) -> list[tuple[int, float]]:
    return [(x["iteration"], x["loss"]) for x in read_metrics_lines(run / "metrics.jsonl") if x["type"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run folder) of an uninterrupted 6-iteration run: what every faulted run must end at."""
    root = tmp_path_factory.mktemp("faults")
    data = make_coco(root / "data", num_images=4)
    p = run_cli(train_args(data, root / "ref"))
    assert p.returncode == 0, p.stdout
    return data, root / "ref"


def killed_after(data: Path, run: Path, k: int) -> None:
    """Train into ``run`` and SIGKILL the process right after its checkpoint at iteration ``k``."""
    assert run_cli(train_args(data, run), {"kill_after_checkpoint": k}).returncode == -signal.SIGKILL


def resumed(data: Path, run: Path, *extra: str) -> str:
    """Resume ``run`` to its end; its output."""
    p = run_cli(train_args(data, run, *extra, "--resume"))
    assert p.returncode == 0, p.stdout
    return p.stdout


def assert_matches_reference(run: Path, ref: Path) -> None:
    assert same_weights(run / "model_0000006.pth", ref / "model_0000006.pth")
    assert losses(run) == losses(ref)  # every iteration logged once, with the same loss


@pytest.mark.slow
@pytest.mark.parametrize("fault", [{"kill_after_checkpoint": 4}, {"kill_writing_checkpoint": 4}],
                         ids=["killed-after-checkpoint", "killed-while-writing-checkpoint"])
def test_killed_run_resumes_to_the_same_weights(reference, tmp_path, fault):
    data, ref = reference
    p = run_cli(train_args(data, tmp_path / "run"), fault)
    assert p.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    if "kill_writing_checkpoint" in fault:
        assert not (run / "model_0000004.pth").exists() and list(run.glob(".model_0000004.pth.*.tmp"))
    p = run_cli(train_args(data, run, "--resume"))
    assert p.returncode == 0, p.stdout
    resumed_at = 4 if "kill_after_checkpoint" in fault else 2
    assert f"at iteration {resumed_at}" in p.stdout
    assert_matches_reference(run, ref)


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_an_older_one(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    killed_after(data, run, 4)
    newest = run / "model_0000004.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk, a bad copy
    out = resumed(data, run)
    assert "model_0000004.pth cannot be loaded" in out and "at iteration 2" in out
    assert (run / "model_0000004.pth.corrupt").exists() and (run / "model_0000002.pth").exists()
    assert_matches_reference(run, ref)


@pytest.mark.slow
def test_file_size_limit_while_checkpointing_stops_with_the_cause_and_keeps_the_previous(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    killed_after(data, run, 2)
    before = (run / "model_0000002.pth").read_bytes()
    limit = len(before) // 2  # metrics.jsonl and the config fit; a checkpoint does not
    p = run_cli(train_args(data, run, "--resume"), {"file_size_limit": limit})
    assert p.returncode == 2, p.stdout
    assert "model_0000004.pth: could not write the checkpoint" in p.stdout and "file-size limit" in p.stdout
    assert "internal error" not in p.stdout and "Traceback" not in p.stdout
    assert (run / "model_0000002.pth").read_bytes() == before and not list(run.glob(".*.tmp"))
    assert not (run / "model_0000004.pth").exists()
    resumed(data, run)
    assert_matches_reference(run, ref)


def test_metrics_line_cut_by_a_file_size_limit_leaves_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    code = (
        "import json, resource, signal, sys\n"
        "from fromscratch.utils import append_line\n"
        "from fromscratch.errors import StorageError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        f"f = open({str(path)!r}, 'ab', buffering=0)\n"
        "try:\n"
        "    for i in range(100):\n"
        "        append_line(f, sys.argv[1], json.dumps({'type': 'train', 'iteration': i, 'loss': 0.123456789}))\n"
        "except StorageError as e:\n"
        "    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert f"{path}: could not write the file (File too large: the file-size limit" in p.stdout, p.stdout
    text = path.read_text()
    assert 900 < len(text) <= 1000 and text.endswith("\n")
    assert [x["iteration"] for x in read_metrics_lines(path)] == list(range(len(text.splitlines())))


def test_append_line_cuts_back_a_short_write(tmp_path):
    """A writer that stops half-way (as a full disk does) leaves the file at its last whole line."""

    class HalfThenFull:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            self.calls += 1
            if self.calls == 1:
                return self.f.write(bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 1}\n')
    with open(path, "ab", buffering=0) as f, pytest.raises(StorageError, match="the disk is full"):
        append_line(HalfThenFull(f), path, json.dumps({"type": "train", "iteration": 2}))
    assert path.read_text() == '{"type": "train", "iteration": 1}\n'


def test_torn_last_metrics_line_is_skipped_and_named(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 1}\n{"type": "eval", "iteration": 2}\n{"type": "tr')
    assert [x["iteration"] for x in read_metrics_lines(path)] == [1, 2]
    assert "line 3 is torn" in caplog.text
    path.write_text('{"type": "train", "iteration": 1}\nnot json\n{"type": "eval", "iteration": 2}\n')
    with pytest.raises(FromScratchError, match="line 2 is not a metrics line"):
        read_metrics_lines(path)


@pytest.mark.slow
def test_resume_truncates_a_torn_metrics_line(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    killed_after(data, run, 4)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "iteration": 5, "lo')
    assert "is torn" in resumed(data, run)
    assert_matches_reference(run, ref)


def _hold_lock(folder: Path, name: str = "run.lock") -> subprocess.Popen:
    code = ("import sys, time\nfrom fromscratch.utils import FolderLock\n"
            f"lock = FolderLock({str(folder)!r}, {name!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(RunLocked, match=f"in use by another process .*PID {holder.pid}, since "):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: the holder never releases; its lock file still names it
        holder.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    with caplog.at_level("INFO"), FolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a process that has ended (host {os.uname().nodename}, PID {holder.pid}" \
        in caplog.text
    assert (tmp_path / "run.lock").read_text() == ""  # released


@pytest.mark.slow
def test_training_into_a_folder_in_use_is_refused(reference, tmp_path):
    data, _ = reference
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold_lock(run)
    try:
        p = run_cli(train_args(data, run))
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2 and f"PID {holder.pid}" in p.stdout and "internal error" not in p.stdout
    assert not list(run.glob("model_*.pth"))


@pytest.mark.slow
def test_resume_with_another_config_lists_the_keys_and_allows_a_longer_schedule(reference, tmp_path):
    data, _ = reference
    run = tmp_path / "run"
    killed_after(data, run, 2)
    p = run_cli(train_args(data, run, "model.backbone.name=resnet34", "model.fpn.channels=128", "--resume"))
    assert p.returncode == 2 and "internal error" not in p.stdout
    assert "model.backbone.name: 'resnet18' in the run, 'resnet34' now" in p.stdout
    assert "model.fpn.channels: 64 in the run, 128 now" in p.stdout and "train.iterations" in p.stdout
    out = resumed(data, run, "train.iterations=8", "train.steps=[6]", "train.eval_period=4")
    assert "train.iterations changed from 6 to 8 (allowed on resume)" in out
    assert (run / "model_0000008.pth").exists()


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of nine references (1 KB): refused before anything walks it, in a process that
    could not survive walking it (1 GB of address space above what Python needs)."""
    lines = ["a: &a {" + ", ".join(f"x{i}: lol" for i in range(9)) + "}"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} {{" + ", ".join(f"k{j}: *{prev}" for j in range(9)) + "}")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmodel: {backbone: *i}\n")
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from fromscratch.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code, "config", "show", str(bomb)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 2, p.stderr
    assert f"{bomb}: refused: its YAML aliases" in p.stderr and "internal error" not in p.stderr
    assert time.monotonic() - t0 < 60  # not a speed target: the old behaviour took minutes or ran out of memory
    self_ref = tmp_path / "self.yaml"
    self_ref.write_text("model: &m {backbone: *m}\n")
    p = subprocess.run([sys.executable, "-m", "fromscratch", "config", "show", str(self_ref)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 2 and "contains itself" in p.stderr


# ---------------------------------------------------------------------------------- a whole study


def _study(tmp: Path, name: str, data: Path) -> Path:
    import yaml

    s = {"detector": str(ROOT / "configs/models/cpu.yaml"),
         "overrides": {"data.train": str(data), "data.val": str(data), "data.train_scales": [64],
                       "data.test_scale": 64, "data.max_size": 64, "data.num_workers": 0, "train.warmup_iters": 2,
                       "model.meta_arch": "faster_rcnn", "train.checkpoint_period": 3, "train.log_period": 1,
                       "train.x_iterations": 12},  # 1x = 12 iterations, 2x = 24: ~70 logged steps to kill among
         "arms": ["scratch", {"name": "scratch_b", "overrides": {"train.seed": 1}}], "schedules": ["2x", "1x"],
         "data_sizes": ["all"], "seeds": [0], "eval_points": 2, "parallel": 2, "output_dir": str(tmp / name)}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def _train_lines(study: Path) -> int:
    return sum((p.read_text().count('"type": "train"')) for p in study.glob("runs/*/metrics.jsonl"))


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads (the runner starts runs from a pool)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _comparable(study: Path) -> dict[str, list[dict]]:
    """Every run's metrics lines without the timings (which differ between any two runs)."""
    drop = {"time", "data_time", "images_per_s"}
    return {p.parent.name: [{k: v for k, v in x.items() if k not in drop} for x in read_metrics_lines(p)]
            for p in sorted(study.glob("runs/*/metrics.jsonl"))}


@pytest.mark.slow
def test_a_study_killed_at_random_points_completes_with_identical_metrics(tmp_path):
    """Four SIGKILLs at seeded random points: two of the whole runner (its process group, as a node
    failure does) and two of one training process; each time the study is started again."""
    data = make_coco(tmp_path / "data", num_images=4, size=(64, 64))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    whole = subprocess.run([sys.executable, "-m", "fromscratch", "study", str(_study(tmp_path, "whole", data))],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    path, study = _study(tmp_path, "killed", data), tmp_path / "killed"
    rng = random.Random(0)
    kills, killed = ["runner", "training", "runner", "training"], []
    for attempt in range(len(kills) + 3):
        proc = subprocess.Popen([sys.executable, "-m", "fromscratch", "study", str(path)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if attempt < len(kills):
            target = _train_lines(study) + rng.randint(2, 12)
            while proc.poll() is None and _train_lines(study) < target:
                time.sleep(0.05)
            if proc.poll() is None:
                if kills[attempt] == "runner":
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed.append("runner")
                elif victims := _children(proc.pid):
                    os.kill(victims[0], signal.SIGKILL)
                    killed.append("training")
        proc.communicate(timeout=600)
        if attempt >= len(kills) and proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr
    assert killed.count("runner") == 2 and killed.count("training") >= 1, killed
    assert _comparable(study) == _comparable(tmp_path / "whole")
    # the disk fills while the report is rebuilt: a named cause, and the previous report.md intact
    report = (study / "report.md").read_text()
    p = run_cli(["report", str(study)], {"file_size_limit": 4096})
    assert p.returncode == 2 and "file-size limit" in p.stdout and "internal error" not in p.stdout, p.stdout
    assert (study / "report.md").read_text() == report
