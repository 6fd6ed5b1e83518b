"""`make bench`: run every benchmark in turn and write benchmarks/RESULTS.md (machine, date, commit, the
tables, and every target line gathered at the top). Each benchmark runs as its own process; a failing
one is reported in the file and the others still run.
Usage: python benchmarks/run_all.py [--out benchmarks/RESULTS.md] [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_name  # noqa: E402

BENCHES = [
    ("train_step.py", []),
    ("loader.py", []),
    ("flops.py", []),
    ("eval.py", []),
    ("time_to_ap.py", []),
    ("presets.py", ["--steps", "3", "--bf16"]),
    ("memory.py", []),
]
QUICK = {"train_step.py": ["--rounds", "2", "--block", "3", "--profile-steps", "1", "--variants", "ref", "ours",
                           "ours_ddp2"],
         "loader.py": ["--steps", "4"], "flops.py": ["--steps", "2"], "eval.py": ["--images", "100"],
         "time_to_ap.py": ["--target", "0.01", "--max-minutes", "0.05", "--eval-every", "4", "--val-images", "4",
                           "--slice", "4", "--cap-ratio", "1.5"],
         "presets.py": ["--steps", "1", "--presets", "configs/models/cpu.yaml"],
         "memory.py": ["--images", "2000", "--iterations", "4"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks that every benchmark runs")
    ap.add_argument("--only", nargs="*", help="benchmark files to run (default: all)")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    sections, targets, failed = [], [], []
    start = time.perf_counter()
    for name, extra in BENCHES:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(ROOT / "benchmarks" / name)] + (QUICK[name] if args.quick else extra)
        print(f"== {' '.join(cmd[1:])}", flush=True)
        tick = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        took = time.perf_counter() - tick
        if proc.returncode != 0:
            failed.append(name)
            body = f"## {name}: FAILED (exit {proc.returncode})\n\n```\n{proc.stderr[-3000:]}\n```\n"
        else:
            body = proc.stdout.strip() + "\n"
            targets += [ln for ln in proc.stdout.splitlines() if ln.startswith("- target")]
        print(body, flush=True)
        sections.append(body + f"\n_`python benchmarks/{name}{' ' + ' '.join(cmd[2:]) if cmd[2:] else ''}` took "
                               f"{took:.0f} s._\n")
    total = time.perf_counter() - start
    head = [f"# Benchmark results{' (quick check, not a measurement)' if args.quick else ''}", "",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- commit: {commit}", f"- machine: {cpu_name()}, {__import__('os').cpu_count()} cores visible",
            f"- command: `make bench` (python benchmarks/run_all.py{' --quick' if args.quick else ''}), "
            f"{total / 60:.1f} minutes in all",
            "- these machines are shared and noisy: read the ratios measured side by side, not the seconds", "",
            "## Targets", ""] + (targets or ["- none measured"]) + [""]
    if failed:
        head += [f"Failed: {', '.join(failed)}", ""]
    Path(args.out).write_text("\n".join(head) + "\n" + "\n".join(sections))
    print(f"wrote {args.out} ({total / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
