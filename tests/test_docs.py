"""Runs the code blocks of README.md and docs/usage.md as a newcomer would copy them: the shell blocks (the install
step excepted: the test environment is installed already) and then the Python blocks, in a fresh folder.

`google/embeddinggemma-300m` is replaced by the real checkpoint when EMBEDDINGGEMMA_REFERENCE is set, else by a tiny
checkpoint with the real model's 768-d output (so the Matryoshka dims of the examples exist)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REFERENCE, REPO, slow
from testing_embeddinggemma import build_tiny_sentence_transformer


BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.DOTALL)


def blocks(path: Path, language: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    start = text.find("## From install to search") if path.name == "README.md" else 0  # skip the set-up commands
    return [code for lang, code in BLOCK.findall(text[start:]) if lang == language]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("newcomer")
    source = REFERENCE
    if not source:
        source = str(workdir.parent / "tiny-st-768")
        build_tiny_sentence_transformer(source, dense_out_features=[128, 768])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for code in blocks(REPO / "README.md", "bash"):
        for line in code.strip().splitlines():
            if line.startswith("pip install"):
                continue
            line = line.replace("google/embeddinggemma-300m", source)
            result = subprocess.run(line, shell=True, cwd=workdir, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (workdir / "embeddinggemma-300m" / "model.safetensors").is_file()
    return workdir


def run_python(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{code}\n{result.stderr[-3000:]}"
    return result.stdout


def test_readme_blocks(workdir):
    (code,) = blocks(REPO / "README.md", "python")
    output = run_python(code, workdir)
    assert len(output.strip().splitlines()) == 4
    if REFERENCE:
        assert output.startswith("0.6361  Mars, known for its reddish appearance")


def usage_block_params() -> list:
    """One test per Python block of docs/usage.md; those that export or quantize the model are slow (20-100 s with the
    real checkpoint)."""
    codes = blocks(REPO / "docs" / "usage.md", "python")
    heavy = ("torch.onnx.export", ".quantize(", 'quantize="int8"', "torch.compile")
    return [pytest.param(i, marks=slow) if any(h in code for h in heavy) else i for i, code in enumerate(codes)]


@pytest.mark.parametrize("index", usage_block_params())
def test_usage_blocks(workdir, index):
    run_python(blocks(REPO / "docs" / "usage.md", "python")[index], workdir)
