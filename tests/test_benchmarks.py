"""The benchmark scripts run (smoke mode: tiny model, few texts) and report agreement with plain encode."""

import os
import subprocess
import sys

from conftest import REPO, slow


pytestmark = slow  # each runs a benchmark script end to end in a subprocess (8-45 s)


def test_bench_corpus_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_corpus.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| embed_corpus --local |" in result.stdout and "| 0.0e+00 |" in result.stdout


def test_bench_inference_smoke(tmp_path):
    plot = tmp_path / "lengths.svg"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_inference.py"),
            "--smoke",
            "--repeats",
            "1",
            "--plot",
            str(plot),
            "--lengths",
            "16,64",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in result.stdout.splitlines()
        if line.startswith(("| short", "| documents", "| mixed")) and "GEMM ceiling" not in line
    ]
    systems = {row[1] for row in rows}
    expected = {"sentence-transformers", "transformers-native", "onnxruntime fp32", "ours int8 (encode defaults)"}
    expected |= {"onnxruntime int8 (model_quantized.onnx)", "ours bf16 (encode defaults)"}
    if __import__("embeddinggemma_tools.convert.export", fromlist=["export"]).llama_cpp_available():
        expected |= {
            "llama.cpp f16 (flash attention; 2048-token batches)",
            "llama.cpp q8_0 (flash attention; 2048-token batches)",
        }
    assert expected <= systems
    assert len(rows) == 3 * len(systems)
    for row in rows:
        cosine = float(row[6])
        # every system computes the same embeddings; lower precision within its error, and llama.cpp keeps <eos> off
        # texts cut at the tiny model's 128 tokens (the real model's 2,048 are never reached here)
        lower = any(kind in row[1] for kind in ("int8", "f16", "bf16", "q8_0"))
        assert cosine > (0.99 if lower else 0.99999), row
        if row[7]:
            assert float(row[7]) <= 1e-5, row  # our packed path vs our reference path
    ceilings = [line for line in result.stdout.splitlines() if line.startswith("|") and "GEMM ceiling" in line]
    assert len(ceilings) == 3 * 3 and any("int8 GEMM ceiling" in line for line in ceilings)  # fp32, bf16, int8
    (probe,) = [line for line in result.stdout.splitlines() if line.startswith("precision probe")]
    assert "float32" in probe and "bfloat16" in probe and "precision='fastest' picks" in probe
    # tokens/s against text length: one line per system in the table and in the plot
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == len(systems)
    sweep = [line for line in result.stdout.splitlines() if line.startswith("| ") and line.count("|") == 4]
    assert {line.split("|")[1].strip() for line in sweep} >= systems


def test_bench_compile_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_compile.py"), "--smoke", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    difference = float(result.stdout.split("max abs difference ")[1].split()[0])
    assert difference <= 1e-5, result.stdout  # the compiled reference path gives the eager packed path's vectors
    assert "| torch.compile (reference path) |" in result.stdout


def test_bench_ab_compares_two_folders(tiny_converted_dir):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_ab.py"),
            str(tiny_converted_dir),
            str(tiny_converted_dir),
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max abs diff 0.0e+00" in result.stdout  # the same folder twice gives the same embeddings
    assert result.stdout.count("| forward,") == 2


def test_bench_training_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--smoke", "--texts", "96"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "configuration" not in line]
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    assert cells[0].startswith("baseline") and cells[4] == "1.00x" and float(cells[5]) > 0  # peak RSS in GB
    assert any(row.startswith("| + batches grouped by length") for row in rows)
    assert "threads" in result.stdout and ("avx" in result.stdout or "flags unknown" in result.stdout)


def test_bench_training_memory_smoke():
    """One training process per allocator, each row with its own peak RSS; an allocator that is not installed is
    reported as such, not measured as glibc."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_training_memory.py"), "--smoke"]
        + ["--allocators", "glibc,jemalloc"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in result.stdout.splitlines()[4:]
        if line.startswith("| ")
    }
    assert set(rows) == {"glibc", "jemalloc"} and float(rows["glibc"][0]) > 0.05
    jemalloc = rows["jemalloc"][0].strip()
    assert jemalloc == "not installed" or float(jemalloc) > 0.05


def test_bench_precision_smoke():
    """The precision benchmark runs each mode against float32 on a tiny model and prints the probe's figures."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_precision.py"), "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "EMBEDDINGGEMMA_MODEL"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| short", "| mixed"))]
    assert {row[1].strip().split(" ")[0] for row in rows} == {"float32", "bfloat16", "int8", "fastest"}
    assert all(float(row[4]) > 0.99 for row in rows)
    assert any(line.startswith("precision probe") for line in result.stdout.splitlines())
