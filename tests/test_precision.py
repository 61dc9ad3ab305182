"""bfloat16 kept honest: embeddings normalised in float32 and returned float32, the config's dtype following the
weights, and a warning on CPUs that emulate bfloat16."""

import json
import warnings

import torch

import modeling_embeddinggemma
from test_modeling import make_batch, tiny_model


def test_bfloat16_embeddings_are_float32_unit_vectors():
    model = tiny_model().to(torch.bfloat16)
    ids, mask = make_batch(seed=3)
    with torch.no_grad():
        for fast in (True, False):
            model.config.use_fast_path = fast
            embedding = model(input_ids=ids, attention_mask=mask).sentence_embedding
            assert embedding.dtype == torch.float32
            torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(len(ids)), atol=1e-6, rtol=0)
            assert float((embedding * embedding).sum(-1).max()) <= 1 + 1e-6  # a text's similarity with itself
            truncated = model(input_ids=ids, attention_mask=mask, truncate_dim=16).sentence_embedding
            torch.testing.assert_close(truncated.norm(dim=-1), torch.ones(len(ids)), atol=1e-6, rtol=0)


def test_bfloat16_stays_close_to_float32():
    model = tiny_model()
    ids, mask = make_batch(seed=4)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).sentence_embedding
        actual = model.to(torch.bfloat16)(input_ids=ids, attention_mask=mask).sentence_embedding
    assert float(torch.nn.functional.cosine_similarity(actual, expected).min()) > 0.999


def test_config_dtype_follows_the_weights(tmp_path):
    model = tiny_model()
    assert model.to(dtype=torch.bfloat16).config.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert model.float().config.dtype == torch.float32
    assert model.model.config.dtype == torch.float32  # one config, shared with the encoder


def test_bfloat16_on_a_cpu_without_native_products_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(modeling_embeddinggemma, "cpu_has_native_bf16", lambda: False)
    model = tiny_model().to(torch.bfloat16)
    ids, mask = make_batch(seed=5)
    with caplog.at_level("WARNING"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert "bfloat16 on a CPU without native bfloat16 products" in caplog.text
    assert "dtype=torch.float32" in caplog.text


def test_native_bfloat16_probe_answers():
    assert isinstance(modeling_embeddinggemma.cpu_has_native_bf16(), bool)


def test_int8_says_so_where_bfloat16_is_the_faster_choice(monkeypatch):
    """On AMX CPUs bfloat16 products outrun int8 ones (docs/performance.md): quantize='int8' says so; elsewhere not."""
    import pytest

    import quantization_embeddinggemma

    monkeypatch.setattr(quantization_embeddinggemma, "cpu_has_amx", lambda: True)
    with pytest.warns(UserWarning, match="load with dtype=torch.bfloat16 instead of quantize='int8'"):
        quantization_embeddinggemma.quantize_int8(tiny_model(), rotation=0, rounding="nearest")
    monkeypatch.setattr(quantization_embeddinggemma, "cpu_has_amx", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantization_embeddinggemma.quantize_int8(tiny_model(), rotation=0, rounding="nearest")
