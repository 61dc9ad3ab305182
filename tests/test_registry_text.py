"""scripts/fetch_registry_text.py on a tiny local simple index: single texts and retrieval-shaped pairs from a wheel's
README, each package's licence recorded, and the files read by `train_embeddinggemma.py train --data`."""

import json
import subprocess
import sys
import zipfile

import train_embeddinggemma as te
from conftest import REPO


README = """# demo-package

A small library that parses calendar files and turns recurring events into plain Python dates for scheduling.

## Installation

Install it with pip from the package index and import the parser module in your scheduling code to get started.

## Usage

Call the parser with a file path and iterate over the events it yields, each with its start and end dates.
"""


def make_index(root):
    (root / "files").mkdir(parents=True)
    wheel = root / "files" / "demo_package-1.0-py3-none-any.whl"
    metadata = (
        "Metadata-Version: 2.1\nName: demo-package\nVersion: 1.0\nSummary: Parse calendar files into Python dates\n"
        "License-Expression: MIT\nDescription-Content-Type: text/markdown\n\n" + README
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_package-1.0.dist-info/METADATA", metadata)
    (root / "simple" / "demo-package").mkdir(parents=True)
    (root / "simple" / "index.html").write_text('<a href="demo-package/">demo-package</a>')
    (root / "simple" / "demo-package" / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256=0">{wheel.name}</a>'
    )
    return f"file://{root}/simple"


def test_registry_text_gives_texts_pairs_and_licences(tmp_path):
    index = make_index(tmp_path / "index")
    out = tmp_path / "text"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fetch_registry_text.py"), str(out), "--index", index],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert {"anchor": "demo-package: Installation", "positive": README.split("\n\n")[3].strip()} in pairs
    assert pairs[0]["anchor"] == "Parse calendar files into Python dates"  # the summary -> the first paragraph
    (source,) = [json.loads(line) for line in (out / "sources.jsonl").read_text().splitlines()]
    assert source["name"] == "demo-package" and source["licence"] == "MIT" and source["file"].endswith(".whl")
    rows = te.load_data([str(out / "texts.jsonl"), str(out / "pairs.jsonl")])
    assert len(rows) == len(pairs) + 3 and all(row["anchor"] for row in rows)
    assert sum("positive" not in row for row in rows) == 3  # the single texts, for distillation
