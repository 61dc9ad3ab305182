"""--to onnx and --to gguf: each export verified in its own runtime against our float32 model (onnxruntime; llama.cpp's
Python bindings), refusals for what a runtime would compute differently, and the model card's code blocks run as a
user would run them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REFERENCE, requires_checkpoint, slow
from convert_checkpoint import ConversionError, convert, verification_texts
from embeddinggemma_tools.convert import export as ex


STSB_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark" / "sts-test.csv"
needs_onnx = pytest.mark.skipif(
    not all(ex._importable(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="--to onnx needs onnx, onnxscript and onnxruntime: pip install 'embeddinggemma[onnx]'",
)
needs_llama_cpp = pytest.mark.skipif(
    not ex.llama_cpp_available(),
    reason="llama.cpp's Python bindings are not installed: bash scripts/install_llama_cpp.sh .venv (bash setup.sh "
    "does it for .venv)",
)
needs_optimum = pytest.mark.skipif(
    not ex._importable("optimum.onnxruntime"),
    reason="sentence-transformers' ONNX backend needs optimum-onnx (in .venv-oldest: bash setup.sh --oldest)",
)


@pytest.fixture(scope="module")
def tiny_hidden_head_dir(tmp_path_factory):
    """A tiny sentence-transformers checkpoint whose head ends at the hidden size (64), as EmbeddingGemma's does and
    llama.cpp's gemma-embedding graph requires."""
    from testing_embeddinggemma import build_tiny_sentence_transformer

    folder = tmp_path_factory.mktemp("st64") / "tiny-st-64"
    build_tiny_sentence_transformer(folder, dense_out_features=[128, 64])
    return folder


@pytest.fixture(scope="module")
def tiny_ours(tiny_hidden_head_dir, tmp_path_factory):
    """The same model in this package's format: the float32 model the exports are checked against."""
    return convert(
        str(tiny_hidden_head_dir), tmp_path_factory.mktemp("ours") / "tiny-ours", matryoshka_dims=[64, 32, 16]
    )


@pytest.fixture(scope="module")
def tiny_all(tiny_hidden_head_dir, tmp_path_factory):
    """One folder with every target: the sentence-transformers layout, onnx/ and the GGUF files."""
    types = ["f32", "f16", "bf16", "q8_0"] if ex.llama_cpp_available() else ["f32", "q8_0"]
    out = tmp_path_factory.mktemp("all") / "tiny-all"
    logs = []
    if not all(ex._importable(name) for name in ("onnx", "onnxscript", "onnxruntime")):
        pytest.skip("--to onnx needs onnx, onnxscript and onnxruntime")
    convert(
        str(tiny_hidden_head_dir),
        out,
        to="sentence-transformers,onnx,gguf",
        gguf_types=types,
        matryoshka_dims=[64, 32, 16],
        log=logs.append,
    )
    return out, types, logs


def padded(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def our_model(folder):
    from transformers import AutoTokenizer

    from modeling_embeddinggemma import EmbeddingGemmaModel

    return EmbeddingGemmaModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------------------


@needs_onnx
def test_onnx_files_run_in_onnxruntime_on_other_shapes(tiny_all, tiny_ours):
    import onnxruntime

    out, _, _ = tiny_all
    model, tokenizer = our_model(tiny_ours)
    session = onnxruntime.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)  # dynamic batch and length
    long_text = verification_texts(tokenizer, model.config)[-1]
    for texts in (["a"], ["the man is playing guitar", long_text, "a dog", "mars"], [long_text] * 2):
        ids, mask = padded(tokenizer, texts)
        hidden, embedding = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(torch.from_numpy(embedding), expected.sentence_embedding, atol=1e-5, rtol=0)
        real = mask.bool()
        torch.testing.assert_close(
            torch.from_numpy(hidden)[real], expected.last_hidden_state[real], atol=1e-4, rtol=1e-5
        )
    quantized = onnxruntime.InferenceSession(
        str(out / "onnx" / "model_quantized.onnx"), providers=["CPUExecutionProvider"]
    )
    ids, mask = padded(tokenizer, ex.QUALITY_TEXTS)
    (embedding,) = quantized.run(["sentence_embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).sentence_embedding
    cosine = ex.cosines(embedding, expected)
    assert float(cosine.min()) >= ex.ONNX_INT8_MIN_COSINE
    assert float(cosine.min()) < 1 - 1e-7  # really quantized
    assert (out / "onnx" / "model_quantized.onnx").stat().st_size < 0.8 * (out / "onnx" / "model.onnx").stat().st_size
    # per-token activation scales: a text's int8 embedding does not depend on what it is padded with
    ids, mask = padded(tokenizer, ["a dog", long_text, "mars"])
    (batch,) = quantized.run(["sentence_embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    for row in range(len(ids)):
        length = int(mask[row].sum())
        alone_feeds = {
            "input_ids": ids[row : row + 1, :length].numpy(),
            "attention_mask": mask[row : row + 1, :length].numpy(),
        }
        (alone,) = quantized.run(["sentence_embedding"], alone_feeds)
        np.testing.assert_allclose(alone[0], batch[row], atol=1e-5)


@needs_onnx
def test_onnx_alone_has_no_encoder_safetensors_and_refuses_bfloat16(tiny_hidden_head_dir, tmp_path):
    out = convert(str(tiny_hidden_head_dir), tmp_path / "onnx-only", to="onnx")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "onnx/model.onnx" in names and "onnx/model_quantized.onnx" in names and "tokenizer.json" in names
    assert "model.safetensors" not in names and "modules.json" in names and "2_Dense/model.safetensors" in names
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3_text"
    card = (out / "README.md").read_text()
    assert "library_name: transformers.js" in card and "- transformers.js" in card and "sentence_embedding" in card
    with pytest.raises(ConversionError, match="bfloat16 is not offered for ONNX"):
        convert(str(tiny_hidden_head_dir), tmp_path / "bf16", to="onnx", dtype="bfloat16")
    with pytest.raises(ConversionError, match="float16"):
        convert(str(tiny_hidden_head_dir), tmp_path / "f16", to="onnx", dtype="float16")
    assert not (tmp_path / "bf16").exists() and not (tmp_path / "f16").exists()


@needs_onnx
def test_onnx_of_an_encoder_gemma3_cannot_describe_keeps_our_config(tmp_path):
    """A T5Gemma-derived encoder has no Gemma 3 config: the ONNX folder carries ours and the tokenizer."""
    from testing_embeddinggemma import build_tiny_t5gemma

    build_tiny_t5gemma(tmp_path / "t5")
    out = convert(str(tmp_path / "t5"), tmp_path / "t5-onnx", "t5gemma", to="onnx")
    assert json.loads((out / "config.json").read_text())["model_type"] == "embeddinggemma"
    assert (out / "onnx" / "model.onnx").exists() and (out / "tokenizer.json").exists()
    assert not (out / "modules.json").exists()  # no sentence-transformers view without a Gemma 3 config
    assert 'backend="onnx"' not in (out / "README.md").read_text()


@needs_onnx
def test_onnx_int8_below_the_floor_is_refused_and_nothing_written(tiny_hidden_head_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "ONNX_INT8_MIN_COSINE", 1.0)
    with pytest.raises(ConversionError, match="int8 ONNX variant is too far"):
        convert(str(tiny_hidden_head_dir), tmp_path / "refused", to="onnx")
    assert not (tmp_path / "refused").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@needs_onnx
@needs_optimum
def test_sentence_transformers_onnx_backend_loads_the_export(tiny_all, tiny_hidden_head_dir):
    from sentence_transformers import SentenceTransformer

    out, _, logs = tiny_all
    assert any("'sentence-transformers backend=onnx': {" in line for line in logs)
    reference = SentenceTransformer(str(tiny_hidden_head_dir), device="cpu")
    for file_name in ("onnx/model.onnx", "onnx/model_quantized.onnx"):
        st = SentenceTransformer(str(out), backend="onnx", device="cpu", model_kwargs={"file_name": file_name})
        texts = ["task: search result | query: mars", "title: none | text: the red planet", "a"]
        cosine = torch.nn.functional.cosine_similarity(
            torch.as_tensor(st.encode(texts)), torch.as_tensor(reference.encode(texts)), dim=-1
        )
        assert float(cosine.min()) >= (0.99999 if file_name.endswith("model.onnx") else ex.ONNX_INT8_MIN_COSINE)


# ----------------------------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------------------------


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, f in reader.fields.items():
        if not f.data:
            continue
        values = [f.parts[i] for i in f.data]
        if (
            f.types
            and f.types[0] == gguf.GGUFValueType.STRING
            or (f.types[0] == gguf.GGUFValueType.ARRAY and f.types[-1] == gguf.GGUFValueType.STRING)
        ):
            values = [bytes(v).decode("utf-8") for v in values]
        else:
            values = [v.tolist()[0] if len(v) == 1 else v.tolist() for v in values]
        fields[key] = values if f.types[0] == gguf.GGUFValueType.ARRAY else values[0]
    return fields, {t.name: t for t in reader.tensors}


def test_gguf_metadata_and_tensors_are_llama_cpps(tiny_all, tiny_ours):
    import gguf

    out, types, _ = tiny_all
    model, tokenizer = our_model(tiny_ours)
    fields, tensors = read_gguf(out / "tiny-all-f32.gguf")
    arch = "gemma-embedding"
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.pooling_type"] == gguf.PoolingType.MEAN.value
    assert fields[f"{arch}.attention.sliding_window"] == 4  # symmetric: |i - j| <= 2, as the model's window
    assert fields[f"{arch}.attention.sliding_window_pattern"] == [True, False, True]
    assert fields[f"{arch}.rope.freq_base"] == 1_000_000.0 and fields[f"{arch}.rope.freq_base_swa"] == 10_000.0
    assert fields[f"{arch}.dense_2_feat_in"] == 64 and fields[f"{arch}.dense_2_feat_out"] == 128
    assert fields[f"{arch}.dense_3_feat_in"] == 128 and fields[f"{arch}.dense_3_feat_out"] == 64
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is True
    assert json.loads(fields["embeddinggemma.prompts"])["query"] == "task: search result | query: "
    state = model.state_dict()
    np.testing.assert_array_equal(tensors["dense_2.weight"].data, state["dense.0.weight"].numpy())
    np.testing.assert_array_equal(tensors["dense_3.weight"].data, state["dense.1.weight"].numpy())
    # Gemma's norms are stored as 1 + w, as llama.cpp's own converter writes them
    np.testing.assert_array_equal(
        tensors["blk.0.attn_q_norm.weight"].data, (state["model.layers.0.self_attn.q_norm.weight"] + 1).numpy()
    )
    vocab = len(fields["tokenizer.ggml.tokens"])
    assert tensors["token_embd.weight"].data.shape == (vocab, 64) and vocab <= model.config.vocab_size
    _, q8 = read_gguf(out / "tiny-all-q8_0.gguf")
    assert q8["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert q8["blk.0.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@needs_llama_cpp
def test_gguf_runs_in_llama_cpp_like_our_model(tiny_all, tiny_ours):
    """Each type, on texts that include one longer than the window: llama.cpp's token ids are the tokenizer's and its
    normalised embeddings match our float32 model."""
    out, types, logs = tiny_all
    model, tokenizer = our_model(tiny_ours)
    texts = verification_texts(tokenizer, model.config) + ["mars ü 日本語", "the  dog\n\nruns"]
    assert len(tokenizer(texts[-3])["input_ids"]) > sum(model.config.attention_window) + 1
    reference = ex.reference_embeddings(model, tokenizer, texts)
    for gguf_type in types:
        embeddings, ids = ex.llama_cpp_embeddings(out / f"tiny-all-{gguf_type}.gguf", texts)
        assert [list(i) for i in ids] == [tokenizer(t)["input_ids"] for t in texts]
        assert float(np.linalg.norm(embeddings, axis=1).min()) > 0
        cosine = ex.cosines(embeddings, reference)
        assert float(cosine.min()) >= ex.GGUF_MIN_COSINE[gguf_type], (gguf_type, cosine)
    assert any("'tiny-all-q8_0.gguf': {'min_cosine'" in line for line in logs)


def test_gguf_refuses_what_llama_cpp_would_compute_differently(tiny_st_dir, tmp_path):
    with pytest.raises(ConversionError, match="a head ending at 48 dims"):  # llama.cpp needs the hidden size
        convert(str(tiny_st_dir), tmp_path / "a", to="gguf")
    with pytest.raises(ConversionError, match="--gguf-type q4_0"):
        convert(str(tiny_st_dir), tmp_path / "b", to="gguf", gguf_types=["q4_0"])
    with pytest.raises(ConversionError, match="applies to --to gguf"):
        convert(str(tiny_st_dir), tmp_path / "c", gguf_types=["f32"])
    with pytest.raises(ConversionError, match="two folder layouts"):
        convert(str(tiny_st_dir), tmp_path / "d", to="embeddinggemma,sentence-transformers")
    with pytest.raises(ConversionError, match="--to tflite"):
        convert(str(tiny_st_dir), tmp_path / "e", to="onnx,tflite")
    assert list(tmp_path.iterdir()) == []


def test_gguf_refuses_a_t5gemma_encoder(tmp_path):
    from testing_embeddinggemma import build_tiny_t5gemma

    build_tiny_t5gemma(tmp_path / "t5")
    with pytest.raises(ConversionError, match="T5Gemma-derived encoder"):
        convert(str(tmp_path / "t5"), tmp_path / "out", "t5gemma", to="gguf", embedding_dim=64)


def test_gguf_without_llama_cpp_is_written_and_says_unverified(tiny_hidden_head_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "llama_cpp_available", lambda: False)
    out = convert(str(tiny_hidden_head_dir), tmp_path / "g", to="GGUF", gguf_types="Q8_0")  # any case
    card = (out / "README.md").read_text()
    assert (out / "g-q8_0.gguf").exists() and "Not verified at conversion: llama.cpp's Python bindings" in card


# ----------------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------------


def test_model_card_lists_every_file_and_its_python_blocks_run(tiny_all, monkeypatch):
    out, types, _ = tiny_all
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    for tag in ("sentence-transformers", "onnx", "transformers.js", "gguf", "llama.cpp"):
        assert f"- {tag}\n" in front
    assert "library_name: sentence-transformers" in front
    for name in ["onnx/model.onnx", "onnx/model_quantized.onnx", *(f"tiny-all-{t}.gguf" for t in types)]:
        assert f"`{name}`" in card and (out / name).exists()
    assert "unnormalised" in card and "Transformers.js" in card and "```js" in card

    import huggingface_hub

    monkeypatch.chdir(out.parent)  # the card names the repo "tiny-all": here, the local folder of that name
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: str(out.parent / repo_id))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: str(out / filename))
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 3  # sentence-transformers, ONNX Runtime, llama.cpp
    ran = 0
    for block in blocks:
        if "llama_cpp" in block and not ex.llama_cpp_available():
            continue
        exec(compile(block, "README.md", "exec"), {})
        ran += 1
    assert ran == len(blocks) - (not ex.llama_cpp_available())


@needs_onnx
def test_push_to_hub_uploads_every_variant_in_one_commit(tiny_hidden_head_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    import convert_checkpoint

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(("create_repo", repo_id)))

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    argv = ["--from", "sentence-transformers", str(tiny_hidden_head_dir), str(tmp_path / "out")]
    argv += ["--to", "sentence-transformers,onnx,gguf", "--gguf-type", "f16,q8_0", "--push-to-hub", "me/eg-all"]
    assert convert_checkpoint.main(argv) == 0
    assert [c[0] for c in calls] == ["create_repo", "create_commit"]  # one commit: every variant together
    uploaded = set(calls[1][2])
    assert {"README.md", "model.safetensors", "2_Dense/model.safetensors", "onnx/model.onnx"} <= uploaded
    assert {"onnx/model_quantized.onnx", "eg-all-f16.gguf", "eg-all-q8_0.gguf", "tokenizer.json"} <= uploaded
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'SentenceTransformer("me/eg-all")' in card and 'hf_hub_download("me/eg-all", "eg-all-q8_0.gguf")' in card
    assert 'snapshot_download("me/eg-all")' in card and 'AutoModel.from_pretrained("me/eg-all"' in card
    out = capsys.readouterr().out
    assert "SentenceTransformer(" in out and "onnxruntime.InferenceSession(" in out and "llama.cpp" in out


# ----------------------------------------------------------------------------------------------------------------
# The real checkpoint
# ----------------------------------------------------------------------------------------------------------------


@slow
@requires_checkpoint
@needs_onnx
def test_real_checkpoint_onnx_and_q8_0(tmp_path):
    """google/embeddinggemma-300m --to onnx,gguf: float32 ONNX within 1e-5, int8 ONNX above its floor and q8_0 above
    0.999 on STS-B test sentences (when ../shared/data has them), verified at conversion by the runtimes."""
    texts = None
    if STSB_TEST.exists():
        rows = [line.split("\t") for line in STSB_TEST.read_text(encoding="utf-8").splitlines()[:100]]
        texts = ["task: sentence similarity | query: " + row[5] for row in rows if len(row) > 6]
    logs = []
    out = convert(
        REFERENCE,
        tmp_path / "eg-exports",
        to="onnx,gguf",
        gguf_types="q8_0",
        verify_texts=texts,
        log=logs.append,
    )
    assert (out / "onnx" / "model.onnx").exists() and (out / "eg-exports-q8_0.gguf").exists()
    figures = "\n".join(logs)
    assert "'model_quantized.onnx': {" in figures
    if ex.llama_cpp_available():
        assert "'eg-exports-q8_0.gguf': {'min_cosine'" in figures
