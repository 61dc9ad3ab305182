"""Nothing lost, nothing mixed: the faults and misuses an adversarial user tried (issue 13), each kept from coming
back. Corpus locking and complete outputs, full model fingerprints, CSV ids as written, converter misuse refused,
interrupted conversions cleaned up, the bfloat16 verification threshold, errors instead of tracebacks, no foreign
code without opt-in, and the small ones."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

import convert_checkpoint
import embed_corpus as ec
from conftest import REPO, slow
from convert_checkpoint import ConversionError, convert
from embed_corpus import CorpusError, embed_corpus
from embeddinggemma_tools import files
from helpers import read_output, write_corpus


def run_corpus(*args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "embed_corpus.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


# ----------------------------------------------------------------------------------------------------------------
# 1. One run per output folder; a finished output never gains rows
# ----------------------------------------------------------------------------------------------------------------


def test_two_concurrent_runs_on_one_output_never_mix(tiny_converted_dir, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    write_corpus(corpus, rows=300)
    out = tmp_path / "out"
    common = ["--model", tiny_converted_dir, "--input", corpus, "--output", out, "--local"]
    runs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "embed_corpus.py"), *map(str, common), "--shard-rows", str(rows)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rows in (20, 30)
    ]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results  # at least one run finished
    refused = [err for code, err in results if code != 0]
    assert all("is being written by another run" in err for err in refused), refused
    output = read_output(out)  # asserts every id once
    assert len(output) == 300 and {v.shape for v in output.values()} == {(48,)}
    # a rerun with the other settings is refused; one with the winner's settings reports done and adds nothing
    manifest = json.loads((out / "_manifest.json").read_text())
    winner, loser = manifest["settings"]["shard_rows"], {20: 30, 30: 20}[manifest["settings"]["shard_rows"]]
    assert "refusing to mix" in run_corpus(*common, "--shard-rows", loser).stderr
    again = run_corpus(*common, "--shard-rows", winner)
    assert again.returncode == 0 and "0 to embed" in again.stdout
    assert len(pq.read_table(out)) == 300
    assert not (out / "_lock").exists()


def test_a_live_lock_refuses_and_a_dead_ones_lock_is_taken_over(tiny_converted_dir, tmp_path):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(corpus, rows=20)
    out.mkdir()
    host = socket.gethostname()
    lock = out / "_lock"
    lock.write_text(json.dumps({"host": host, "pid": os.getpid(), "token": "x", "started": "now"}))
    with pytest.raises(CorpusError, match=rf"another run \(pid {os.getpid()} on {host}"):
        embed_corpus(str(tiny_converted_dir), corpus, out, local=True, log=lambda m: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": host, "pid": dead.pid, "token": "y", "started": "then"}))  # killed run
    assert embed_corpus(str(tiny_converted_dir), corpus, out, local=True, log=lambda m: None)["embedded_rows"] == 20
    assert not lock.exists()


def test_a_lock_from_another_machine_is_taken_over_only_once_stale(tiny_converted_dir, tmp_path, monkeypatch):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(corpus, rows=10)
    out.mkdir()
    lock = out / "_lock"
    lock.write_text(json.dumps({"host": "other-machine", "pid": 1, "token": "z", "started": "now"}))
    with pytest.raises(CorpusError, match="another run"):
        embed_corpus(str(tiny_converted_dir), corpus, out, local=True, log=lambda m: None)
    old = time.time() - files.LOCK_STALE_S - 10  # no heartbeat for longer than the stale limit
    os.utime(lock, (old, old))
    assert embed_corpus(str(tiny_converted_dir), corpus, out, local=True, log=lambda m: None)["embedded_rows"] == 10


def test_a_finished_output_that_gained_rows_is_reported(tiny_converted_dir, tmp_path):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(corpus, rows=30)
    embed_corpus(str(tiny_converted_dir), corpus, out, local=True, shard_rows=10, log=lambda m: None)
    shutil.copy(out / "part-00000.parquet", out / "part-00007.parquet")  # another job's file
    with pytest.raises(CorpusError, match=r"does not hold what its manifest says.*part-00007"):
        embed_corpus(str(tiny_converted_dir), corpus, out, local=True, shard_rows=10, log=lambda m: None)


# ----------------------------------------------------------------------------------------------------------------
# 3. The model fingerprint covers code, tokenizer and every weight byte
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["code", "tensor in the middle", "tokenizer"])
def test_resume_refuses_any_model_change(tiny_converted_dir, tmp_path, change):
    model = tmp_path / "model"
    shutil.copytree(tiny_converted_dir, model)
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_corpus(corpus, rows=30)
    env = {ec.FAULT_ENV: "1"}  # stop after one of three shards, so a resume has work left
    first = run_corpus("--model", model, "--input", corpus, "--output", out, "--local", "--shard-rows", 10, env=env)
    assert first.returncode != 0 and (out / "part-00000.parquet").is_file()
    if change == "code":
        with open(model / "modeling_embeddinggemma.py", "a") as handle:
            handle.write("\n# changed\n")
    elif change == "tokenizer":
        tokenizer = json.loads((model / "tokenizer.json").read_text())
        tokenizer["added_tokens"][0]["content"] += "x"
        (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    else:
        weights = load_file(model / "model.safetensors")
        name = sorted(weights)[len(weights) // 2]
        weights[name] = -weights[name]  # same size, same header
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorpusError, match=r"model\.fingerprint"):
        embed_corpus(str(model), corpus, out, local=True, shard_rows=10, log=lambda m: None)
    assert (out / "_model_fingerprints.json").is_file()  # the cache beside the output


def test_fingerprint_cache_is_used_and_never_stale(tiny_converted_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_converted_dir, model)
    cache = tmp_path / "cache.json"
    first = files.fingerprint_folder(model, cache)
    assert files.fingerprint_folder(model, cache) == first == files.fingerprint_folder(model)
    digests = json.loads(cache.read_text())
    assert {"model.safetensors", "config.json", "modeling_embeddinggemma.py", "tokenizer.json"} <= set(digests)
    weights = load_file(model / "model.safetensors")
    weights["dense.0.weight"][0, 0] += 1
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert files.fingerprint_folder(model, cache) != first


# ----------------------------------------------------------------------------------------------------------------
# 4. CSV ids, texts and titles as written
# ----------------------------------------------------------------------------------------------------------------


def test_csv_ids_and_texts_are_kept_as_written(tiny_converted_dir, tmp_path):
    corpus, out = tmp_path / "docs.csv", tmp_path / "out"
    corpus.write_text("id,text\n001,hello\n010,a dog\n1,the red planet\n01,42\nabc,blue sky\n")
    summary = embed_corpus(str(tiny_converted_dir), corpus, out, local=True, log=lambda m: None)
    assert summary["embedded_rows"] == 5 and summary["rejected_rows"] == 0
    assert set(read_output(out)) == {"001", "010", "1", "01", "abc"}


# ----------------------------------------------------------------------------------------------------------------
# 7 (corpus). Errors, not tracebacks
# ----------------------------------------------------------------------------------------------------------------


def test_corpus_input_errors_are_error_lines(tiny_converted_dir, tmp_path):
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    result = run_corpus("--model", tiny_converted_dir, "--input", bad_utf8, "--output", tmp_path / "o1", "--local")
    assert result.returncode == 2 and "line 2 is not UTF-8" in result.stderr and "Traceback" not in result.stderr

    big_id = tmp_path / "big.jsonl"
    big_id.write_text('{"id": 1, "text": "a"}\n{"id": 99999999999999999999, "text": "b"}\n')
    result = run_corpus("--model", tiny_converted_dir, "--input", big_id, "--output", tmp_path / "o2", "--local")
    assert result.returncode == 2 and "does not fit a 64-bit integer" in result.stderr

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = run_corpus("--model", tiny_converted_dir, "--input", big_id, "--output", a_file, "--local")
    assert result.returncode == 2 and "is a file" in result.stderr

    good = tmp_path / "good.jsonl"
    write_corpus(good, rows=3)
    result = run_corpus(
        "--model", tiny_converted_dir, "--input", good, "--output", tmp_path / "o3", "--local", "--prompt-name", "nope"
    )
    assert result.returncode == 2 and "--prompt-name" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# 8. No code from an input runs without opt-in
# ----------------------------------------------------------------------------------------------------------------


def poison(folder):
    """Our code files in `folder` replaced by code that fails loudly if anything imports it."""
    for path in folder.glob("*.py"):
        path.write_text("raise RuntimeError('the source folder\\'s code was imported')\n")


def test_converter_verifies_our_folders_with_this_packages_code(tiny_converted_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_converted_dir, source)
    poison(source)
    out = convert(str(source), tmp_path / "out", "embeddinggemma")
    assert "code was imported" not in (out / "modeling_embeddinggemma.py").read_text()  # ours, not the poison


def test_corpus_uses_this_packages_code_and_asks_before_running_another_models(tiny_converted_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_converted_dir, model)
    poison(model)
    corpus = tmp_path / "docs.jsonl"
    write_corpus(corpus, rows=5)
    assert embed_corpus(str(model), corpus, tmp_path / "out", local=True, log=lambda m: None)["embedded_rows"] == 5

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_converted_dir, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config.update(architectures=["SomeoneElsesModel"], auto_map={"AutoModel": "modeling_x.SomeoneElsesModel"})
    config["model_type"] = "someone-else"
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorpusError, match="needs --trust-remote-code"):
        embed_corpus(str(foreign), corpus, tmp_path / "out2", local=True, log=lambda m: None)


# ----------------------------------------------------------------------------------------------------------------
# 2, 5, 6, 7 (converter)
# ----------------------------------------------------------------------------------------------------------------


def test_gemma3_on_a_folder_with_a_trained_head_is_refused(tiny_st_dir, tmp_path):
    with pytest.raises(ConversionError, match=r"trained embedding head.*--from sentence-transformers"):
        convert(str(tiny_st_dir), tmp_path / "out", "gemma3")
    assert not (tmp_path / "out").exists()
    convert(str(tiny_st_dir), tmp_path / "new-head", "gemma3", head_init="identity", verify_output=False)


def test_our_own_folder_is_refused_by_the_other_readers(tiny_converted_dir, tmp_path):
    for kind in ("gemma3", "sentence-transformers"):
        with pytest.raises(ConversionError, match="--from embeddinggemma"):
            convert(str(tiny_converted_dir), tmp_path / kind, kind, head_init="identity")


CONVERT_AND_HANG = """
import sys, time
sys.path.insert(0, {repo!r})
import convert_checkpoint as cc
target = cc.TARGETS[{target!r}]
def slow_write(folder, model, tokenizer, export):
    target.write(folder, model, tokenizer, export)
    print("written", flush=True)
    time.sleep(600)
cc.TARGETS[{target!r}] = cc.Target(slow_write, target.verify, target.loads_with, target.base)
cc.convert({source!r}, {output!r}, to={to!r})
"""


@pytest.mark.parametrize(
    "signal_name, target",
    [("SIGTERM", "embeddinggemma"), ("SIGKILL", "embeddinggemma"), pytest.param("SIGTERM", "onnx", marks=slow)],
)
def test_an_interrupted_conversion_leaves_no_weights_behind(tiny_st_dir, tmp_path, signal_name, target):
    """A conversion or an export (--to onnx) stopped while its files are written: SIGTERM removes the temporary
    folder; after SIGKILL the next run does; the output never holds a partial folder."""
    output = tmp_path / "out"
    to = "embeddinggemma" if target == "embeddinggemma" else f"embeddinggemma,{target}"
    code = CONVERT_AND_HANG.format(repo=str(REPO), source=str(tiny_st_dir), output=str(output), target=target, to=to)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "written"
    assert list(tmp_path.glob(".out.tmp-*"))  # the temporary folder holds the weights now
    process.send_signal(getattr(signal, signal_name))
    process.wait(timeout=60)
    leftovers = list(tmp_path.glob(".out.*"))
    if signal_name == "SIGTERM":
        assert not leftovers and process.returncode != 0
    else:  # nothing can clean up after SIGKILL; the next run does, since its writer is gone
        assert leftovers
        convert(str(tiny_st_dir), output)
        assert not list(tmp_path.glob(".out.*")) and (output / "model.safetensors").is_file()
    assert not output.exists() or (output / "model.safetensors").is_file()


def test_a_running_conversions_temporary_folder_is_left_alone(tmp_path):
    busy = tmp_path / ".out.tmp-busy"
    busy.mkdir()
    (busy / files.OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert files.remove_stale_temporary_folders(tmp_path / "out") == []
    assert busy.is_dir()


def add_noise(weight: torch.Tensor, scale: float = 0.2) -> torch.Tensor:
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    return weight + scale * weight.float().std().to(weight.dtype) * noise


@pytest.mark.parametrize("where", ["written weights", "weight mapping"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verification_catches_a_damaged_weight_matrix(tiny_st_dir, tmp_path, monkeypatch, dtype, where):
    """A clean conversion passes; 20% noise in one weight matrix fails, in float32 and in bfloat16: damage between
    reading and writing by the exact weight check, a wrong weight mapping (the reader's own output damaged) by the
    cosine check, whose bfloat16 threshold is calibrated in docs/conversion.md."""
    convert(str(tiny_st_dir), tmp_path / "clean", dtype=dtype)
    name = "model.layers.0.mlp.up_proj.weight"
    if where == "written weights":
        build = convert_checkpoint.build_model

        def damaged(fields, state_dict, dtype_):
            model = build(fields, state_dict, dtype_)
            weight = model.get_parameter(name)
            weight.data = add_noise(weight.data)
            return model

        monkeypatch.setattr(convert_checkpoint, "build_model", damaged)
        message = "the written weights are not the source's"
    else:
        read = convert_checkpoint.READERS["sentence-transformers"]

        def misread(*args, **kwargs):
            source = read(*args, **kwargs)
            source.state_dict[name] = add_noise(source.state_dict[name])
            return source

        monkeypatch.setitem(convert_checkpoint.READERS, "sentence-transformers", misread)
        message = "the converted model disagrees with the source framework.s"
    with pytest.raises(ConversionError, match=f"Verification failed: {message}"):
        convert(str(tiny_st_dir), tmp_path / "damaged", dtype=dtype)
    assert not (tmp_path / "damaged").exists()


def damaged_source(tiny_st_dir, tmp_path, damage):
    source = tmp_path / "source"
    shutil.copytree(tiny_st_dir, source)
    weights = source / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt weights":
        weights.write_bytes(b"\xff" * 64)
    elif damage == "invalid config.json":
        (source / "config.json").write_text("{not json")
    elif damage == "unknown activation":
        config = json.loads((source / "config.json").read_text())
        config["hidden_activation"] = "gelu_new_fancy"
        (source / "config.json").write_text(json.dumps(config))
    elif damage == "missing shard":
        index = {"weight_map": {"embed_tokens.weight": "model-00001-of-00002.safetensors"}}
        weights.unlink()
        (source / "model.safetensors.index.json").write_text(json.dumps(index))
    return source


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated weights", r"model\.safetensors cannot be read as safetensors"),
        ("corrupt weights", r"model\.safetensors cannot be read as safetensors"),
        ("invalid config.json", r"config\.json is not valid JSON"),
        ("unknown activation", r"hidden_activation='gelu_new_fancy' is not an activation"),
        ("missing shard", r"Missing weights file .*model-00001-of-00002\.safetensors"),
    ],
)
def test_damaged_sources_give_error_lines(tiny_st_dir, tmp_path, damage, message, capsys):
    source = damaged_source(tiny_st_dir, tmp_path, damage)
    # the sentence-transformers layout keeps the backbone in the root folder: damage it there
    code = convert_checkpoint.main(["--from", "sentence-transformers", str(source), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    assert __import__("re").search(message, err), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check needs another user")
def test_a_read_only_output_is_refused_before_reading(tiny_st_dir, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    with pytest.raises(ConversionError, match="Cannot write beside"):
        convert(str(tiny_st_dir), parent / "out")


def test_unwritable_output_is_refused_before_reading(tiny_st_dir, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_checkpoint.tempfile, "TemporaryFile", no_space)
    read = []
    monkeypatch.setattr(convert_checkpoint, "resolve_source", lambda *a, **k: read.append(1))
    with pytest.raises(ConversionError, match="No space left on device"):
        convert(str(tiny_st_dir), tmp_path / "out")
    assert read == []  # refused before reading anything


def test_not_enough_free_space_is_refused(tiny_st_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(convert_checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(ConversionError, match="Not enough free space"):
        convert(str(tiny_st_dir), tmp_path / "out")


def test_written_files_follow_the_umask_and_the_card_names_no_local_path(tiny_converted_dir):
    mask = os.umask(0)
    os.umask(mask)
    for path in tiny_converted_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
    card = (tiny_converted_dir / "README.md").read_text()
    assert str(tiny_converted_dir.parent.parent) not in card and "/tmp" not in card


def test_upload_failure_hint_names_the_hf_command(tmp_path, monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise RuntimeError("no token")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fail)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConversionError, match=r"`hf upload user/repo "):
        convert_checkpoint.push_folder(tmp_path, "user/repo", private=False)


# ----------------------------------------------------------------------------------------------------------------
# 9. The small ones
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_converted_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)


@pytest.mark.parametrize(
    "texts, error, message",
    [
        (None, TypeError, "got NoneType"),
        (42, TypeError, "got int"),
        ({"a": "b"}, TypeError, "got dict"),
        (["ok", "bad \udc80 text"], ValueError, r"Text 1 is not valid Unicode"),
    ],
)
def test_encode_refuses_what_it_cannot_embed(model, texts, error, message):
    with pytest.raises(error, match=message):
        model.encode(texts)


def test_truncate_dim_must_be_an_int(model):
    with pytest.raises(TypeError, match=r"truncate_dim=32\.0 must be an int"):
        model.encode("a dog", truncate_dim=32.0)


def test_pipeline_takes_empty_lists_and_tuples_and_checks_similarity_dicts(tiny_converted_dir):
    from transformers import pipeline

    pipe = pipeline("sentence-embeddings", model=str(tiny_converted_dir), trust_remote_code=True)
    assert pipe([]) == []
    assert np.allclose(pipe(("a dog", "the red planet")), pipe(["a dog", "the red planet"]), atol=1e-6)
    with pytest.raises(TypeError, match=r"items \(index, type\) \[\(1, 'NoneType'\)\]"):
        pipe({"source_sentence": "a dog", "sentences": ["a cat", None]})


def test_matryoshka_dims_without_duplicates():
    from testing_embeddinggemma import tiny_config

    with pytest.raises(ValueError, match="has duplicates"):
        tiny_config(matryoshka_dims=[48, 32, 32])


def test_forward_beyond_the_maximum_length_warns(caplog):
    from helpers import tiny_model

    model = tiny_model()
    length = model.config.max_position_embeddings + 4
    with caplog.at_level("WARNING"), torch.no_grad():
        model(input_ids=torch.full((1, length), 5))
    assert f"Inputs of {length} tokens are longer than the model's" in caplog.text


def test_no_local_path_in_any_written_file(tiny_converted_dir):
    """A pushed folder publishes every file: none may name the converting machine's paths."""
    for path in tiny_converted_dir.iterdir():
        if path.suffix in (".json", ".md"):
            assert "/tmp/" not in path.read_text() and str(REPO) not in path.read_text(), path.name


def test_an_embeddinggemma_only_folder_converts_without_its_code_or_a_prompt(tiny_converted_dir, tmp_path):
    """A folder whose model_type only this package reads (a T5Gemma-derived encoder, say): its tokenizer is loaded
    without transformers asking to run the folder's code."""
    source = tmp_path / "source"
    shutil.copytree(tiny_converted_dir, source)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "embeddinggemma"
    del config["use_bidirectional_attention"]
    (source / "config.json").write_text(json.dumps(config))
    poison(source)
    convert(str(source), tmp_path / "out", "embeddinggemma")


@slow
def test_ray_helpers_of_a_sigkilled_driver_are_ended_by_the_next_run(tiny_converted_dir, tmp_path):
    """Ray's dashboard and runtime-env agents outlive a SIGKILLed driver (re-parented to init); the next run on the
    same output ends the ones the killed run recorded, then completes."""
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, rows=1000)
    output = tmp_path / "out"
    command = ["--model", tiny_converted_dir, "--input", corpus, "--output", output, "--shard-rows", "50"]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "embed_corpus.py"), *map(str, command)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record = output / ec.RAY_HELPERS
    deadline = time.monotonic() + 180
    while not record.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert record.is_file(), "the run did not record its Ray processes"
    time.sleep(2)
    process.kill()
    process.wait(timeout=60)
    time.sleep(8)  # the helpers that die with the driver are gone by now
    helpers = [h for h in json.loads(record.read_text())["helpers"] if files.process_start_time(h["pid"]) == h["start"]]
    assert helpers, "expected Ray helpers still running after SIGKILL (Ray's behaviour this test guards against)"
    result = run_corpus(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"ended [1-9]\d* Ray helper processes left by a killed earlier run", result.stderr)
    assert not any(files.process_start_time(h["pid"]) == h["start"] for h in helpers)
    assert not record.exists()
    assert len(read_output(output)) == 1000
