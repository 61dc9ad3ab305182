"""scripts/fetch_registry_text.py on a tiny local simple index: single texts and retrieval-shaped pairs from a wheel's
README, code pairs from its Python files (none equal to the standard library's), each package's licence recorded,
and the files read by `train_embeddinggemma.py train --data`."""

import inspect
import json
import subprocess
import sys
import textwrap
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


MODULE = '''
def parse_calendar(path, strict=True):
    """Read a calendar file and yield one event per entry with its dates."""
    with open(path) as handle:
        for line in handle:
            yield line.split(",")


def _private(x):
    """A private helper is not a public function to retrieve."""
    return x
'''


def make_index(root):
    (root / "files").mkdir(parents=True)
    wheel = root / "files" / "demo_package-1.0-py3-none-any.whl"
    metadata = (
        "Metadata-Version: 2.1\nName: demo-package\nVersion: 1.0\nSummary: Parse calendar files into Python dates\n"
        "License-Expression: MIT\nDescription-Content-Type: text/markdown\n\n" + README
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_package-1.0.dist-info/METADATA", metadata)
        # the package's own function, and a vendored copy of a standard-library function (held out: never written)
        archive.writestr("demo_package/__init__.py", MODULE + "\n\n" + inspect.getsource(textwrap.indent))
        archive.writestr("demo_package/tests/test_parse.py", MODULE.replace("parse_calendar", "test_calendar"))
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
    code = [json.loads(line) for line in (out / "code-pairs.jsonl").read_text().splitlines()]
    assert code == [
        {
            "anchor": "Read a calendar file and yield one event per entry with its dates.",
            "positive": "def parse_calendar(path, strict=True):\n    with open(path) as handle:\n"
            "        for line in handle:\n            yield line.split(',')",
        }
    ]
    assert source["code-pairs"] == 1 and "1 code pairs" in result.stdout
