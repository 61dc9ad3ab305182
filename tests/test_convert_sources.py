"""`--from gemma3 | t5gemma | t5gemma2`, the new head, `--to sentence-transformers` and `--push-to-hub`, each on a
tiny checkpoint built and saved by transformers' own classes. Our converted encoder must equal the source's own
bidirectional encoder (float32, real tokens, max abs <= 1e-5) on padded batches longer than the window."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

import convert_checkpoint
from conftest import TEXTS
from convert_checkpoint import ConversionError, convert
from helpers import ATOL
from modeling_embeddinggemma import pool
from testing_embeddinggemma import (
    T5GEMMA2_EOI,
    build_tiny_gemma3,
    build_tiny_t5gemma,
    build_tiny_t5gemma2,
)


def _t5gemma_window_is_current():
    from transformers.models.t5gemma import modeling_t5gemma

    return hasattr(modeling_t5gemma, "create_bidirectional_sliding_window_mask")


def _has_t5gemma2():
    import transformers

    return hasattr(transformers, "T5Gemma2ForConditionalGeneration")


SKIPS = {
    "t5gemma": pytest.mark.skipif(
        not _t5gemma_window_is_current(),
        reason="this transformers (< 5) builds T5Gemma's encoder window as |i - j| < window, one token narrower than "
        "current releases (<=), which the conversion follows: the source framework differs, nothing to compare",
    ),
    "t5gemma2": pytest.mark.skipif(not _has_t5gemma2(), reason="this transformers has no T5Gemma 2 (added in 5.x)"),
}
BUILDERS = {
    "gemma3-causal": ("gemma3", lambda folder: build_tiny_gemma3(folder, "causal")),
    "gemma3-conditional": ("gemma3", lambda folder: build_tiny_gemma3(folder, "conditional")),
    "t5gemma": ("t5gemma", build_tiny_t5gemma),
    "t5gemma2": ("t5gemma2", build_tiny_t5gemma2),
}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=SKIPS.get(name, ())) for name in sorted(BUILDERS)])
def converted(request, tmp_path_factory):
    kind, build = BUILDERS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    source_model = build(root / "source")
    convert(str(root / "source"), root / "converted", kind)
    return request.param, source_model, root


def source_encoder(name, source_model):
    """The source framework's own bidirectional encoder on the source weights."""
    if name.startswith("gemma3"):
        from transformers import Gemma3TextConfig, Gemma3TextModel

        language_model = source_model.model if name == "gemma3-causal" else source_model.model.language_model
        text_config = language_model.config.to_dict()
        text_config.update(use_bidirectional_attention=True, attn_implementation="eager")
        encoder = Gemma3TextModel(Gemma3TextConfig(**text_config))
        encoder.load_state_dict(language_model.state_dict())
        return encoder.eval()
    source_model.config._attn_implementation = "eager"
    return source_model.get_encoder().eval()


def batch_with_padding(vocab=384, lengths=(30, 17, 6, 24)):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, 290, (len(lengths), max(lengths)), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        input_ids[row, 0], input_ids[row, n - 1], input_ids[row, n:] = 2, 1, 0
    input_ids[0, 5] = input_ids[1, 3] = T5GEMMA2_EOI  # T5Gemma 2's eoi token: its embedding was folded
    return input_ids, attention_mask


@torch.no_grad()
def test_encoder_equals_the_source_frameworks_bidirectional_encoder(converted):
    name, source_model, root = converted
    model = AutoModel.from_pretrained(root / "converted", trust_remote_code=True).eval()
    input_ids, attention_mask = batch_with_padding()
    expected = source_encoder(name, source_model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    assert (out.last_hidden_state - expected)[real].abs().max() <= ATOL
    # identity head: the embedding is exactly the normalised mean of the final hidden states
    pooled = F.normalize(pool(out.last_hidden_state, real), dim=-1)
    assert (out.sentence_embedding - pooled).abs().max() <= 1e-6
    assert model.config.dense_out_features == [256, 64] and model.config.matryoshka_dims == [64]


def test_card_records_the_verification(converted):
    name, _, root = converted
    card = (root / "converted" / "README.md").read_text()
    assert "library_name: transformers" in card and "pipeline_tag: sentence-similarity" in card
    assert "Verified at conversion against the source framework's own model" in card
    assert "freshly initialised: fine-tune it before use" in card


def test_tokenizer_is_set_up_as_embeddinggemmas(converted):
    _, _, root = converted
    source = AutoTokenizer.from_pretrained(root / "source")
    assert source("a")["input_ids"][-1] != source.eos_token_id and source.padding_side == "left"
    tokenizer = AutoTokenizer.from_pretrained(root / "converted", trust_remote_code=True)
    ids = tokenizer(["a dog", "a"], padding=True)["input_ids"]
    assert ids[0][0] == tokenizer.bos_token_id and ids[0][-1] == tokenizer.eos_token_id
    assert ids[1][-1] == tokenizer.pad_token_id


@pytest.fixture(scope="module")
def gemma3_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3") / "source"
    build_tiny_gemma3(folder, "causal")
    return folder


@torch.no_grad()
def test_embedding_dim_and_random_head(gemma3_source, tmp_path):
    output = convert(str(gemma3_source), tmp_path / "d32", "gemma3", embedding_dim=32)
    model = AutoModel.from_pretrained(output, trust_remote_code=True)
    assert model.config.dense_out_features == [128, 32] and model.config.matryoshka_dims == [32]
    batch = AutoTokenizer.from_pretrained(output, trust_remote_code=True)(TEXTS, padding=True, return_tensors="pt")
    out = model(**batch)
    expected = F.normalize(pool(out.last_hidden_state, batch["attention_mask"].bool())[:, :32], dim=-1)
    assert (out.sentence_embedding - expected).abs().max() <= 1e-6

    output = convert(str(gemma3_source), tmp_path / "d80", "gemma3", embedding_dim=80)  # wider than hidden 64
    model = AutoModel.from_pretrained(output, trust_remote_code=True)
    out = model(**batch)
    pooled = pool(out.last_hidden_state, batch["attention_mask"].bool())
    expected = F.normalize(F.pad(pooled, (0, 16)), dim=-1)  # the mean, zero-padded to 80 dims
    assert out.sentence_embedding.shape == (4, 80) and (out.sentence_embedding - expected).abs().max() <= 1e-6

    output = convert(str(gemma3_source), tmp_path / "random", "gemma3", head_init="random")
    model = AutoModel.from_pretrained(output, trust_remote_code=True)
    product = model.dense[1].weight @ model.dense[0].weight
    assert (product - torch.eye(64)).abs().max() > 0.1  # not the identity
    assert "random initialisation" in (output / "README.md").read_text()


def test_verification_failure_writes_nothing(gemma3_source, tmp_path, monkeypatch):
    original = convert_checkpoint.READERS["gemma3"]

    def with_a_wrong_reference(*args, **kwargs):
        source = original(*args, **kwargs)
        make = source.reference

        def perturbed():
            run = make()
            return lambda ids, mask: (lambda what, hidden: (what, hidden + 0.5 * torch.randn_like(hidden)))(
                *run(ids, mask)
            )

        source.reference = perturbed
        return source

    monkeypatch.setitem(convert_checkpoint.READERS, "gemma3", with_a_wrong_reference)
    with pytest.raises(ConversionError, match="Verification failed: the converted model disagrees"):
        convert(str(gemma3_source), tmp_path / "out", "gemma3")
    assert list(tmp_path.iterdir()) == []


def test_wrong_source_kinds_and_missing_weights(tmp_path, gemma3_source):
    t5 = tmp_path / "t5"
    build_tiny_t5gemma(t5)
    with pytest.raises(ConversionError, match=r"model_type='t5gemma'; --from gemma3 takes a Gemma 3 decoder"):
        convert(str(t5), tmp_path / "out", "gemma3")
    with pytest.raises(ConversionError, match=r"--from t5gemma2 takes a T5Gemma 2 checkpoint"):
        convert(str(t5), tmp_path / "out", "t5gemma2")
    with pytest.raises(ConversionError, match=r"--from t5gemma takes a T5Gemma \(v1\) checkpoint"):
        convert(str(gemma3_source), tmp_path / "out", "t5gemma")
    with pytest.raises(ConversionError, match=r"--from 'llama' is not supported"):
        convert(str(gemma3_source), tmp_path / "out", "llama")

    weights = load_file(t5 / "model.safetensors")
    del weights["model.encoder.layers.1.mlp.up_proj.weight"]
    save_file(weights, t5 / "model.safetensors")
    with pytest.raises(ConversionError, match=r"missing keys \(1\): \['model.layers.1.mlp.up_proj.weight'\]"):
        convert(str(t5), tmp_path / "out", "t5gemma")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5"]


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match=r"holds a 'llama' model; --from gemma3 takes a Gemma 3 decoder GGUF"):
        convert(str(path), tmp_path / "out", "gemma3")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ConversionError, match="is not a readable GGUF file"):
        convert(str(tmp_path / "broken.gguf"), tmp_path / "out", "gemma3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf", "llama.gguf"]


def test_sentence_transformers_round_trip_is_bit_identical(tiny_st_dir, tiny_converted_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    exported = convert(str(tiny_converted_dir), tmp_path / "st", "embeddinggemma", to="sentence-transformers")
    assert load_file(exported / "model.safetensors").keys() == load_file(tiny_st_dir / "model.safetensors").keys()
    for name in ("model.safetensors", "2_Dense/model.safetensors", "3_Dense/model.safetensors"):
        ours, theirs = load_file(exported / name), load_file(tiny_st_dir / name)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name

    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        f"sentence_transformers.models.{t}" for t in ("Transformer", "Pooling", "Dense", "Dense", "Normalize")
    ]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["include_prompt"] is True
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3TextModel"]
    assert config["sliding_window"] == 4 and config["use_bidirectional_attention"] is True
    assert {"rope_theta", "rope_local_base_freq", "_sliding_window_pattern"} <= config.keys()
    assert config["matryoshka_dimensions"] == [48, 32, 16]
    st_config = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["query"] == "task: search result | query: "
    assert "library_name: sentence-transformers" in (exported / "README.md").read_text()

    expected = SentenceTransformer(str(tiny_st_dir), device="cpu").encode_query(TEXTS, convert_to_tensor=True)
    actual = SentenceTransformer(str(exported), device="cpu").encode_query(TEXTS, convert_to_tensor=True)
    assert torch.equal(actual, expected)
    # ... and back again: the Matryoshka dims survive through `matryoshka_dimensions`
    again = convert(str(exported), tmp_path / "ours", "sentence-transformers")
    assert json.loads((again / "config.json").read_text())["matryoshka_dims"] == [48, 32, 16]


def test_t5gemma_models_cannot_be_written_as_gemma3(tmp_path):
    build_tiny_t5gemma(tmp_path / "t5")
    with pytest.raises(ConversionError, match="cannot be written as a Gemma3TextModel: it comes from T5Gemma"):
        convert(str(tmp_path / "t5"), tmp_path / "st", "t5gemma", to="sentence-transformers")
    assert not (tmp_path / "st").exists()


def test_push_to_hub_uploads_the_verified_folder(tiny_st_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, private, exist_ok))

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    code = convert_checkpoint.main(
        [
            "--from",
            "sentence-transformers",
            str(tiny_st_dir),
            str(tmp_path / "out"),
            "--push-to-hub",
            "me/tiny-embeddinggemma",
            "--private",
            "--base-model",
            "google/embeddinggemma-300m",
        ]
    )
    assert code == 0
    assert calls[0] == ("create_repo", "me/tiny-embeddinggemma", True, True)
    uploaded = calls[1][2]
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "modeling_embeddinggemma.py",
        "tokenizer.json",
        "modules.json",
        "config_sentence_transformers.json",
        "pipeline_embeddinggemma.py",
    } <= set(uploaded)
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "base_model:\n- google/embeddinggemma-300m" in card
        and 'AutoModel.from_pretrained("me/tiny-embeddinggemma"' in card
    )
    assert "minimum cosine" in card
    assert "uploaded: https://huggingface.co/me/tiny-embeddinggemma/commit/0" in capsys.readouterr().out

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    code = convert_checkpoint.main(
        ["--from", "sentence-transformers", str(tiny_st_dir), str(tmp_path / "out2"), "--push-to-hub", "me/x"]
    )
    assert code == 2
    assert (
        "Uploading to 'me/x' failed (OSError: no network). The converted folder is complete" in capsys.readouterr().err
    )
    assert (tmp_path / "out2" / "model.safetensors").is_file()  # nothing lost


@SKIPS["t5gemma2"]
def test_t5gemma2_keys_with_the_text_model_segment(tmp_path):
    """Checkpoints saved with `model.encoder.text_model.*` keys (transformers' in-memory names) convert the same."""
    build_tiny_t5gemma2(tmp_path / "plain")
    weights = load_file(tmp_path / "plain" / "model.safetensors")
    renamed = {}
    for key, value in weights.items():
        if key.startswith("model.encoder.") and not key.startswith(
            ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")
        ):
            key = "model.encoder.text_model." + key[len("model.encoder.") :]
        renamed[key] = value
    assert any(k.startswith("model.encoder.text_model.layers.") for k in renamed)
    import shutil

    shutil.copytree(tmp_path / "plain", tmp_path / "segment")
    save_file(renamed, tmp_path / "segment" / "model.safetensors")
    a = convert(str(tmp_path / "plain"), tmp_path / "a", "t5gemma2")
    b = convert(str(tmp_path / "segment"), tmp_path / "b", "t5gemma2")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
