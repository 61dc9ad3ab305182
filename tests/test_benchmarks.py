"""The benchmark scripts run (smoke mode: tiny model, few texts) and report agreement with plain encode."""

import subprocess
import sys

from conftest import REPO


def test_bench_corpus_smoke():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_corpus.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| embed_corpus --local |" in result.stdout and "| 0.0e+00 |" in result.stdout


def test_bench_inference_smoke():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_inference.py"), "--smoke", "--repeats", "1"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| short") or line.startswith("| mixed")]
    assert len(rows) == 6 and all(float(row.split("|")[-2]) > 0.99999 for row in rows)  # outputs agree with ST
