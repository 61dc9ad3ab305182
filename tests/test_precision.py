"""bfloat16 kept honest: embeddings normalised in float32 and returned float32, the config's dtype following the
weights, and a warning on CPUs that emulate bfloat16."""

import json
import warnings

import torch

import modeling_embeddinggemma
from helpers import make_batch, tiny_model
from modeling_embeddinggemma import EmbeddingGemmaLinear


def test_bfloat16_embeddings_are_float32_unit_vectors():
    model = tiny_model().to(torch.bfloat16)
    ids, mask = make_batch(seed=3)
    with torch.no_grad():
        for fast in (True, False):
            model.config.use_packed_path = fast
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
    modeling_embeddinggemma.logger.warning_once.cache_clear()  # an earlier test on this CPU may have had it already
    model = tiny_model().to(torch.bfloat16)
    ids, mask = make_batch(seed=5)
    with caplog.at_level("WARNING"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert "bfloat16 on a CPU without native bfloat16 products" in caplog.text
    assert "dtype=torch.float32" in caplog.text


def test_native_bfloat16_probe_answers():
    assert isinstance(modeling_embeddinggemma.cpu_has_native_bf16(), bool)


def fake_probe(monkeypatch, bfloat16, int8):
    """The precision probe answering fixed figures: float32 at 100 GFLOP/s, the others at the given speed-ups."""
    import precision_embeddinggemma

    figures = {"float32": {"64": 100.0, "512": 100.0}}
    figures["bfloat16"] = {"64": 100.0 * bfloat16, "512": 100.0 * bfloat16}
    figures["int8"] = {"64": 100.0 * int8, "512": 100.0 * int8}
    monkeypatch.setattr(precision_embeddinggemma, "measure_products", lambda config, modes=None: figures)
    monkeypatch.setattr(precision_embeddinggemma, "_warned", set())
    monkeypatch.setattr(precision_embeddinggemma, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(modeling_embeddinggemma, "cpu_has_native_bf16", lambda: True)  # whatever this CPU has
    monkeypatch.setattr(precision_embeddinggemma, "cpu_has_vnni", lambda: True)
    return figures


def test_int8_that_measures_slower_than_float32_warns_once_with_the_ratio_and_the_faster_choice(monkeypatch):
    import pytest

    import quantization_embeddinggemma

    fake_probe(monkeypatch, bfloat16=1.8, int8=0.45)
    with pytest.warns(UserWarning, match=r"int8 runs slower than float32 .* 0\.45x .* fastest mode here is bfloat16"):
        quantization_embeddinggemma.quantize_int8(tiny_model(), rotation=0, rounding="nearest")
    with warnings.catch_warnings():  # once per process
        warnings.simplefilter("error")
        quantization_embeddinggemma.quantize_int8(tiny_model(), rotation=0, rounding="nearest")
    fake_probe(monkeypatch, bfloat16=1.8, int8=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantization_embeddinggemma.quantize_int8(tiny_model(), rotation=0, rounding="nearest")


def test_bfloat16_that_measures_slower_than_float32_warns_and_still_runs(monkeypatch):
    import pytest

    fake_probe(monkeypatch, bfloat16=0.95, int8=0.9)
    model = tiny_model().to(torch.bfloat16)
    ids, mask = make_batch(seed=6)
    with pytest.warns(UserWarning, match=r"bfloat16 runs slower .* 0\.95x .* fastest mode here is float32"):
        with torch.no_grad():
            embedding = model(input_ids=ids, attention_mask=mask).sentence_embedding
    assert embedding.dtype == torch.float32 and model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_precision_fastest_picks_by_the_probe(monkeypatch, tiny_converted_dir):
    """from_pretrained(precision="fastest"): the fastest mode whose agreement holds; float32 when nothing beats it by
    the margin; int8 only where its codes are known to keep 0.999 (VNNI)."""
    import pytest

    import precision_embeddinggemma
    from modeling_embeddinggemma import EmbeddingGemmaModel
    from quantization_embeddinggemma import Int8Linear

    def load():
        return EmbeddingGemmaModel.from_pretrained(tiny_converted_dir, precision="fastest")

    fake_probe(monkeypatch, bfloat16=1.8, int8=1.2)
    model = load()
    assert model.precision_choice["precision"] == "bfloat16" and model.config.dtype == torch.bfloat16
    fake_probe(monkeypatch, bfloat16=1.2, int8=2.0)
    model = load()
    assert model.precision_choice["precision"] == "int8"
    assert any(isinstance(module, Int8Linear) for module in model.modules())
    monkeypatch.setattr(precision_embeddinggemma, "cpu_has_vnni", lambda: False)  # AVX2 kernels: 0.99894 < 0.999
    assert load().precision_choice["precision"] == "bfloat16"
    fake_probe(monkeypatch, bfloat16=1.05, int8=0.5)
    model = load()
    assert model.precision_choice["precision"] == "float32" and model.config.dtype == torch.float32
    assert model.precision_choice["figures"]["float32"]["64"] == 100.0
    with pytest.raises(ValueError, match="both choose the precision"):
        EmbeddingGemmaModel.from_pretrained(tiny_converted_dir, precision="fastest", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="precision='fast' is not supported"):
        EmbeddingGemmaModel.from_pretrained(tiny_converted_dir, precision="fast")


def test_probe_is_quick_cached_and_shaped_like_the_model(tmp_path, monkeypatch):
    import time

    import precision_embeddinggemma

    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_embeddinggemma, "_measured", {})
    config = tiny_model().config
    start = time.perf_counter()
    figures = precision_embeddinggemma.measure_products(config)
    assert time.perf_counter() - start < 5  # tiny shapes; the real model's take ~0.5 s on 2 cores
    assert set(figures) >= {"float32", "bfloat16"} and all(v > 0 for f in figures.values() for v in f.values())
    (cached,) = tmp_path.glob("precision-probe-*.json")
    assert json.loads(cached.read_text())["figures"] == figures
    monkeypatch.setattr(precision_embeddinggemma, "_measured", {})
    monkeypatch.setattr(precision_embeddinggemma, "_time_products", lambda *a: 1 / 0)  # must not measure again
    assert precision_embeddinggemma.measure_products(config) == figures
    cached.write_text("{not json")  # a damaged cache file is measured anew, never trusted
    monkeypatch.setattr(precision_embeddinggemma, "_measured", {})
    monkeypatch.setattr(precision_embeddinggemma, "_time_products", lambda *a: {"float32": {"64": 1.0, "512": 1.0}})
    assert precision_embeddinggemma.measure_products(config) == {"float32": {"64": 1.0, "512": 1.0}}


def test_training_bf16_follows_the_probe_not_the_flags(monkeypatch):
    import precision_embeddinggemma
    import train_embeddinggemma

    monkeypatch.setattr(precision_embeddinggemma, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(modeling_embeddinggemma, "cpu_has_native_bf16", lambda: True)  # whatever this CPU has
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ratio, expected in ((0.9, False), (2.0, True)):
        monkeypatch.setattr(
            precision_embeddinggemma,
            "measure_products",
            lambda config, modes=None, r=ratio: {"float32": {"64": 10.0}, "bfloat16": {"64": 10.0 * r}},
        )
        assert train_embeddinggemma.native_bf16() is expected
        assert train_embeddinggemma.resolved_teacher_dtype("auto") == ("bfloat16" if expected else "float32")
    monkeypatch.setattr(precision_embeddinggemma, "cpu_has_native_bf16", lambda: False)  # emulated: never
    assert train_embeddinggemma.native_bf16() is False


# int8 models behave like models


def quantized_tiny():
    from quantization_embeddinggemma import quantize_int8

    return quantize_int8(tiny_model(), rotation=0, rounding="nearest")


def test_int8_models_deepcopy_pickle_and_torch_save(tmp_path):
    import copy
    import pickle

    model = quantized_tiny()
    ids, mask = make_batch(seed=7)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).sentence_embedding
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(path, weights_only=False)]
    for other in copies:
        with torch.no_grad():
            torch.testing.assert_close(other(input_ids=ids, attention_mask=mask).sentence_embedding, expected)


def test_int8_is_inference_only_and_says_so():
    import pytest

    model = quantized_tiny()
    with pytest.raises(RuntimeError, match="quantized to int8, which is for inference only"):
        model.train()
    assert not model.training and not any(m.training for m in model.modules())  # nothing half-switched
    ids, mask = make_batch(seed=8)
    embeddings = model.model.embed_tokens(ids).detach().requires_grad_()
    with pytest.raises(RuntimeError, match="inference only"):
        model(inputs_embeds=embeddings, attention_mask=mask)


def test_int8_options_are_checked():
    import pytest

    from quantization_embeddinggemma import Int8Part, quantize_int8

    model = quantize_int8(tiny_model(), skip="mlp.down_proj", rotation=0, rounding="nearest")  # a str is one name
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj) is EmbeddingGemmaLinear and isinstance(layer.mlp.gate_proj, Int8Part)
    model = quantize_int8(tiny_model(), skip=("down_proj", "o_proj"), rotation=0, rounding="nearest")
    assert type(model.model.layers[0].self_attn.o_proj) is EmbeddingGemmaLinear
    with pytest.raises(ValueError, match=r"\['mlp.dwn_proj'\] name no product .* 'mlp.down_proj'"):
        quantize_int8(tiny_model(), skip=["mlp.dwn_proj"], rotation=0, rounding="nearest")
    with pytest.raises(ValueError, match="name no product"):
        quantize_int8(tiny_model(), skip="_proj", rotation=0, rounding="nearest")  # not a whole name part
    for texts, message in (([None], r"calibration_texts\[0\] is None"), ("a text", "not one str"), ([], "empty")):
        with pytest.raises((TypeError, ValueError), match=message):
            quantize_int8(tiny_model(), calibration_texts=texts, rotation=0)
