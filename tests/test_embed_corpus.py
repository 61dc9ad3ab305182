"""embed_corpus.py: same vectors as model.encode, exactly once across kills and re-runs, refused resumes, bad rows."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoModel

from conftest import REPO, slow
from embed_corpus import FAULT_ENV, CorpusError, embed_corpus
from helpers import read_output, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    return path, write_corpus(path)


@pytest.fixture(scope="module")
def expected(tiny_converted_dir, corpus):
    """model.encode_document in one process: the reference every run must reproduce."""
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    _, records = corpus
    return dict(zip([r["id"] for r in records], model.encode_document([r["text"] for r in records])))


def assert_matches(output: dict, expected: dict, atol=1e-6):
    assert output.keys() == expected.keys()
    assert max(np.abs(output[k] - expected[k]).max() for k in expected) <= atol


def test_local_run_equals_encode(tiny_converted_dir, corpus, expected, tmp_path):
    path, _ = corpus
    summary = embed_corpus(str(tiny_converted_dir), path, tmp_path / "out", local=True, shard_rows=50)
    assert summary["shards"] == 5 and summary["embedded_rows"] == 240
    assert_matches(read_output(tmp_path / "out"), expected)
    metadata = json.loads(pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).metadata[b"embeddinggemma"])
    assert metadata["settings"]["prompt"] == "title: none | text: " and metadata["model"]["fingerprint"]
    again = embed_corpus(str(tiny_converted_dir), path, tmp_path / "out", local=True, shard_rows=50)
    assert again["embedded_now"] == 0  # everything was done


def test_titles_truncation_and_bfloat16(tiny_converted_dir, corpus, tmp_path):
    path, records = corpus
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    embed_corpus(
        str(tiny_converted_dir),
        path,
        tmp_path / "t",
        local=True,
        title_column="title",
        truncate_dim=16,
        precision="bfloat16",
    )
    output = read_output(tmp_path / "t")
    reference = model.encode_document(
        [r["text"] for r in records], titles=[r["title"] for r in records], truncate_dim=16
    )
    for record, vector in zip(records, reference):
        assert output[record["id"]].shape == (16,)
        assert np.abs(output[record["id"]] - vector).max() <= 2**-8  # bfloat16 rounding


def run_cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "embed_corpus.py"), *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "fault", ["2", pytest.param("2:kill", marks=slow), pytest.param("2:kill-in-write", marks=slow)]
)
def test_killed_midway_then_rerun_gives_each_id_once(tiny_converted_dir, corpus, expected, tmp_path, fault):
    path, _ = corpus
    args = [
        "--model",
        str(tiny_converted_dir),
        "--input",
        str(path),
        "--output",
        str(tmp_path / "out"),
        "--local",
        "--shard-rows",
        "40",
    ]
    first = run_cli(args, {FAULT_ENV: fault})
    assert first.returncode != 0
    parts = sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == 2  # two shards committed before the fault
    if fault.endswith("kill-in-write"):
        assert list((tmp_path / "out").glob(".part-*.tmp"))  # a half-written shard was left behind...
    second = run_cli(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "2 already done, 4 to embed" in second.stdout
    assert not list((tmp_path / "out").glob(".part-*.tmp"))  # ... and cleaned up
    assert_matches(read_output(tmp_path / "out"), expected)


def test_changed_settings_model_or_input_are_refused(tiny_converted_dir, tiny_st_dir, corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "out"
    embed_corpus(str(tiny_converted_dir), path, out, local=True, shard_rows=100)
    with pytest.raises(CorpusError, match=r"settings.truncate_dim: was None, now 32"):
        embed_corpus(str(tiny_converted_dir), path, out, local=True, shard_rows=100, truncate_dim=32)
    with pytest.raises(CorpusError, match=r"settings.prompt_name: was 'document', now 'query'"):
        embed_corpus(str(tiny_converted_dir), path, out, local=True, shard_rows=100, prompt_name="query")
    other_model = tmp_path / "other-model"
    from convert_checkpoint import convert

    convert(str(tiny_st_dir), other_model, matryoshka_dims=[48, 16])
    with pytest.raises(CorpusError, match=r"model.fingerprint: was"):
        embed_corpus(str(other_model), path, out, local=True, shard_rows=100)
    changed = tmp_path / "changed.jsonl"
    write_corpus(changed, seed=1)
    with pytest.raises(CorpusError, match=r"(?s)input.sha256: was .*Re-run with the original arguments"):
        embed_corpus(str(tiny_converted_dir), changed, out, local=True, shard_rows=100)
    with pytest.raises(CorpusError, match=r"--truncate-dim 20 is not one of the model's Matryoshka dims"):
        embed_corpus(str(tiny_converted_dir), path, tmp_path / "x", local=True, truncate_dim=20)


def test_bad_rows_fail_or_go_to_rejects(tiny_converted_dir, tmp_path):
    bad = [
        {"id": None, "text": "no id"},
        {"id": "doc-3", "text": "again"},
        {"id": "n", "text": 42},
        {"id": "m", "text": None},
        {"id": 7, "text": "an int id among strings"},
    ]
    path = tmp_path / "bad.jsonl"
    write_corpus(path, rows=10, extra=bad)
    with pytest.raises(CorpusError) as error:
        embed_corpus(str(tiny_converted_dir), path, tmp_path / "fail", local=True)
    message = str(error.value)
    assert "5 bad row(s)" in message and "row 10 (id None): missing id" in message
    assert "row 14 (id 7): id is int, but earlier ids are str" in message
    assert "row 11 (id 'doc-3'): duplicate id" in message and "row 12 (id 'n'): text is int, not a string" in message
    assert "--on-bad-rows skip" in message
    assert not list((tmp_path / "fail").glob("part-*"))

    summary = embed_corpus(str(tiny_converted_dir), path, tmp_path / "skip", local=True, on_bad_rows="skip")
    assert (summary["embedded_rows"], summary["rejected_rows"]) == (10, 5)
    rejects = [json.loads(line) for line in (tmp_path / "skip" / "_rejects.jsonl").read_text().splitlines()]
    assert [r["position"] for r in rejects] == [10, 11, 12, 13, 14]
    assert len(read_output(tmp_path / "skip")) == 10

    csv = tmp_path / "docs.csv"
    csv.write_text("key,body\n1,hello\n")
    with pytest.raises(CorpusError, match=r"has no column\(s\) \['id', 'text'\]; its columns are \['key', 'body'\]"):
        embed_corpus(str(tiny_converted_dir), csv, tmp_path / "csv", local=True)
    embed_corpus(str(tiny_converted_dir), csv, tmp_path / "csv", local=True, id_column="key", text_column="body")
    assert list(read_output(tmp_path / "csv")) == ["1"]  # CSV ids are kept as written (text)


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'embeddinggemma[ray]')"
)
@slow
def test_ray_with_two_workers_equals_encode_and_resumes_after_a_failure(tiny_converted_dir, corpus, expected, tmp_path):
    path, _ = corpus
    args = [
        "--model",
        str(tiny_converted_dir),
        "--input",
        str(path),
        "--output",
        str(tmp_path / "out"),
        "--num-workers",
        "2",
        "--shard-rows",
        "30",
    ]
    first = run_cli(args, {FAULT_ENV: "2"})  # each worker raises after committing 2 shards
    assert first.returncode != 0
    done = len(list((tmp_path / "out").glob("part-*.parquet")))
    assert 2 <= done < 8
    second = run_cli(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done} already done, {8 - done} to embed" in second.stdout
    assert_matches(read_output(tmp_path / "out"), expected)
