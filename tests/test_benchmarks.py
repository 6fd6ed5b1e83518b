"""The benchmarks run (tiny settings) and write their tables; timings are never asserted here."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, prepared


@pytest.mark.slow
def test_every_benchmark_runs_and_reports_its_targets(tmp_path):
    prepared("fashion-scenes", "train.json")
    prepared("trees", "train.json")
    out = tmp_path / "RESULTS.md"
    env = {**__import__("os").environ, "FROMSCRATCH_BENCH_DIR": str(tmp_path / "bench")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
    text = out.read_text()
    assert proc.returncode == 0, text[-4000:]
    for section in ("Training step", "Data loading", "FLOPs per training step", "COCO evaluation", "Time to bbox AP",
                    "| preset |", "Records memory with 4 loader workers"):
        assert section in text, section
    for name in ("| ref |", "| ours |", "| ours_ddp2 |"):
        assert name in text
    assert "- target training step, ours vs ref" in text and "- target COCO eval speed-up" in text
    assert "- target peak memory with 4 workers, packed vs list" in text
