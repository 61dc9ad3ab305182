"""The benchmark scripts run (smoke mode: tiny model, few texts) and report agreement with plain encode."""

import subprocess
import sys

from conftest import REPO


def test_bench_corpus_smoke():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_corpus.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| embed_corpus --local |" in result.stdout and "| 0.0e+00 |" in result.stdout
