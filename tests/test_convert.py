"""`convert_checkpoint.py --from sentence-transformers`: the output matches SentenceTransformer on the source,
loads from a clean process through AutoModel with trust_remote_code, and bad input loses nothing."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from conftest import TEXTS, run_isolated
from convert_checkpoint import ConversionError, convert, main
from helpers import ATOL


def encode_ours(folder, texts, prompt="", truncate_dim=None):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer([prompt + text for text in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, truncate_dim=truncate_dim).sentence_embedding


def test_output_folder_is_self_contained(tiny_converted_dir):
    files = {p.name for p in tiny_converted_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "configuration_embeddinggemma.py",
        "modeling_embeddinggemma.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    config = json.loads((tiny_converted_dir / "config.json").read_text())
    # transformers' Gemma 3 reads this encoder exactly, so the folder says so (AutoTokenizer needs no remote code)
    assert config["model_type"] == "gemma3_text" and config["use_bidirectional_attention"] is True
    assert config["auto_map"] == {
        "AutoConfig": "configuration_embeddinggemma.EmbeddingGemmaConfig",
        "AutoModel": "modeling_embeddinggemma.EmbeddingGemmaModel",
    }
    assert config["dense_out_features"] == [128, 48] and config["normalize_embeddings"] is True
    assert config["prompts"]["query"] == "task: search result | query: "
    keys = set(load_file(tiny_converted_dir / "model.safetensors"))
    assert {"model.embed_tokens.weight", "dense.0.weight", "dense.1.weight"} <= keys
    tokenizer = AutoTokenizer.from_pretrained(tiny_converted_dir)
    ids = tokenizer(["a dog", "a"], padding=True)["input_ids"]
    assert ids[0][0] == tokenizer.bos_token_id and ids[0][-1] == tokenizer.eos_token_id
    assert ids[1][-1] == tokenizer.pad_token_id  # padded on the right


@pytest.mark.parametrize("prompt_name", [None, "query", "document"])
def test_matches_sentence_transformers(tiny_st_dir, tiny_converted_dir, prompt_name):
    reference = SentenceTransformer(str(tiny_st_dir), device="cpu")
    expected = reference.encode(TEXTS, prompt_name=prompt_name, convert_to_tensor=True)
    prompt = reference.prompts[prompt_name] if prompt_name else ""
    ours = encode_ours(tiny_converted_dir, TEXTS, prompt)
    assert ours.shape == expected.shape == (4, 48)
    assert (ours - expected).abs().max() <= ATOL
    truncated = SentenceTransformer(str(tiny_st_dir), device="cpu", truncate_dim=32)
    expected = truncated.encode(TEXTS, prompt_name=prompt_name, convert_to_tensor=True, normalize_embeddings=True)
    assert (encode_ours(tiny_converted_dir, TEXTS, prompt, truncate_dim=32) - expected).abs().max() <= ATOL


def test_loads_in_a_clean_process_with_trust_remote_code(tiny_converted_dir, tmp_path):
    expected = encode_ours(tiny_converted_dir, TEXTS)
    torch.save(expected, tmp_path / "expected.pt")
    result = run_isolated(
        f"""
        import torch
        from transformers import AutoModel, AutoTokenizer
        folder = {str(tiny_converted_dir)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        batch = tokenizer({TEXTS!r}, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**batch).sentence_embedding
        expected = torch.load("expected.pt")
        print("max abs", (out - expected).abs().max().item())
        assert (out - expected).abs().max() <= {ATOL}
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max abs" in result.stdout


def test_refuses_a_non_empty_output_without_overwrite(tiny_st_dir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(["--from", "sentence-transformers", str(tiny_st_dir), str(output)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]

    assert main(["--from", "sentence-transformers", str(tiny_st_dir), str(output), "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left


def copy_source(tiny_st_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_st_dir, source)
    shutil.copytree(tiny_st_dir.parent / f"{tiny_st_dir.name}-backbone", tmp_path / "source-backbone")
    return source


def assert_nothing_written(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "source-backbone"]


def test_missing_file_is_named(tiny_st_dir, tmp_path):
    source = copy_source(tiny_st_dir, tmp_path)
    (source / "3_Dense" / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"No model.safetensors .* Dense module 3_Dense"):
        convert(str(source), tmp_path / "out")
    (source / "modules.json").unlink()
    with pytest.raises(ConversionError, match=r"Missing file .*modules.json"):
        convert(str(source), tmp_path / "out")
    assert_nothing_written(tmp_path)


def test_pickled_weights_are_never_loaded(tiny_st_dir, tmp_path):
    source = copy_source(tiny_st_dir, tmp_path)
    (source / "model.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ConversionError, match=r"pytorch_model.bin.*never loaded.*safetensors"):
        convert(str(source), tmp_path / "out")
    assert_nothing_written(tmp_path)


def test_unexpected_architecture(tiny_st_dir, tmp_path):
    source = copy_source(tiny_st_dir, tmp_path)
    config = json.loads((source / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaModel"])
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"model_type='llama' and architectures=\['LlamaModel'\]; expected"):
        convert(str(source), tmp_path / "out")
    assert_nothing_written(tmp_path)


def test_shape_mismatches_missing_and_unexpected_keys_are_listed_together(tiny_st_dir, tmp_path):
    source = copy_source(tiny_st_dir, tmp_path)
    weights = load_file(source / "model.safetensors")
    weights["layers.0.mlp.up_proj.weight"] = torch.zeros(7, 64)
    del weights["norm.weight"], weights["layers.1.self_attn.k_norm.weight"]
    weights["layers.0.extra.weight"] = torch.zeros(3)
    save_file(weights, source / "model.safetensors")
    with pytest.raises(ConversionError) as error:
        convert(str(source), tmp_path / "out")
    message = str(error.value)
    assert "missing keys (2): ['model.layers.1.self_attn.k_norm.weight', 'model.norm.weight']" in message
    assert "unexpected keys (1): ['model.layers.0.extra.weight']" in message
    assert "model.layers.0.mlp.up_proj.weight: checkpoint (7, 64), config expects (96, 64)" in message
    assert_nothing_written(tmp_path)


def test_interrupted_conversion_leaves_nothing(tiny_st_dir, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_st_dir), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_hub_ids_go_through_snapshot_download(tiny_st_dir, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(repo_id)
        return str(tiny_st_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    convert("google/embeddinggemma-300m", tmp_path / "out")
    assert calls == ["google/embeddinggemma-300m"]
    assert (tmp_path / "out" / "model.safetensors").is_file()

    def offline(repo_id, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(ConversionError, match=r"Could not fetch 'org/missing' from the Hub \(OSError: no network\)"):
        convert("org/missing", tmp_path / "other")
    with pytest.raises(ConversionError, match="does not exist"):
        convert(str(tmp_path / "nowhere" / "at" / "all"), tmp_path / "other")


def test_bfloat16_output(tiny_st_dir, tmp_path):
    output = convert(str(tiny_st_dir), tmp_path / "bf16", dtype="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in load_file(output / "model.safetensors").values())
    with pytest.raises(ConversionError, match="float16"):
        convert(str(tiny_st_dir), tmp_path / "fp16", dtype="float16")
