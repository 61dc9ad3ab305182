"""int8 (quantization_embeddinggemma.py): agreement with float32 on both layouts, the rebuilt scheme (rotation, GPTQ,
folds), the module swap, the options it checks, and what it refuses."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import quantization_embeddinggemma
from conftest import REPO
from helpers import ATOL, make_batch, tiny_model
from modeling_embeddinggemma import EmbeddingGemmaLinear, EmbeddingGemmaModel
from quantization_embeddinggemma import Int8Linear, Int8Part, quantize_int8


def test_int8_keeps_the_embeddings_and_reports_agreement(capsys, tiny_tokenizer):
    model = tiny_model()
    input_ids, attention_mask = make_batch([16, 9, 3, 12])
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        quantize_int8(model, tokenizer=tiny_tokenizer)
        got = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        model.config.use_packed_path = False
        got_reference_path = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    cosine = (got * expected).sum(-1)
    print(f"int8 vs float32: min cosine {cosine.min():.5f}, mean {cosine.mean():.5f}")
    assert cosine.min() > 0.999
    assert (got - expected).abs().max() > 1e-6  # int8 really ran
    torch.testing.assert_close(got, got_reference_path, atol=ATOL, rtol=0)  # both paths use the same int8 products
    layer = model.model.layers[0]
    for module, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")), (layer.mlp, ("gate_proj", "up_proj"))):
        parts = [getattr(module, name) for name in names]  # swapped for parts of one fused product
        assert all(isinstance(part, Int8Part) and part.product is parts[0].product for part in parts)
    assert isinstance(layer.self_attn.o_proj, Int8Linear)
    assert isinstance(layer.mlp.down_proj, Int8Linear)  # all four products by default
    assert isinstance(model.dense[0], torch.nn.Linear)  # the head stays float


def test_int8_rebuilt_scheme_beats_plain_per_channel_rounding(tiny_tokenizer):
    """Rotation + GPTQ (the defaults) against nearest rounding without rotation, on a model with outlier channels and
    a massive-activation token like the real one: the defaults must be closer to float32."""
    model = tiny_model()
    with torch.no_grad():  # an outlier channel in every norm before a product, as Gemma's norms have
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 30.0
            layer.pre_feedforward_layernorm.weight[5] = 30.0
    input_ids, attention_mask = make_batch([16, 9, 3, 12], seed=9)
    errors = {}
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        for name, options in (("plain", {"rotation": 0, "rounding": "nearest"}), ("default", {})):
            quantized = quantize_int8(copy.deepcopy(model), tokenizer=tiny_tokenizer, **options)
            got = quantized(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
            errors[name] = float(1 - (got * expected).sum(-1).min())
    assert errors["default"] < errors["plain"] / 2, errors


def test_int8_folds_are_exact_in_float32(tiny_tokenizer):
    """The value-channel rotation (o_proj's input) and SmoothQuant's scales change the weights, not the function."""
    model = tiny_model()
    input_ids, attention_mask = make_batch(seed=3)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        v_before = model.model.layers[0].self_attn.v_proj.weight.clone()
        maxima = quantization_embeddinggemma.calibrate(model, ["a dog runs", "the red planet"], tiny_tokenizer)
        for index, layer in enumerate(model.model.layers):
            quantization_embeddinggemma.rotate_value_channels(layer.self_attn, quantization_embeddinggemma.hadamard(8))
            strengths = dict.fromkeys(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], 0.5)
            quantization_embeddinggemma.smooth_layer(
                layer, {fused: maxima[(index, fused)][0] for fused in strengths}, strengths
            )
        got = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    assert not torch.allclose(model.model.layers[0].self_attn.v_proj.weight, v_before)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_int8_linear_with_a_bias_and_rotation_matches_float():
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(64, 24)
    torch.nn.init.normal_(linear.weight, std=0.05, generator=generator)
    torch.nn.init.normal_(linear.bias, std=1.0, generator=generator)
    x = torch.randn(5, 7, 64, generator=generator) * torch.linspace(0.1, 30, 7)[None, :, None]  # rows of any scale
    with torch.no_grad():
        expected = linear(x)
        for rotation in (0, 32):
            got = Int8Linear.from_linears(linear, rotation=rotation)(x)  # this CPU's levels
            assert got.shape == expected.shape
            relative = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
            assert relative.max() < 0.04, (rotation, relative.max())  # int8 rounding: ~1% (8-bit), ~2% (7-bit)


def test_gptq_rounding_moves_calibration_like_products_least():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, generator=generator) * 0.05
    mixing = torch.randn(32, 32, generator=generator)  # correlated input channels, as real activations are
    inputs = torch.randn(512, 32, generator=generator) @ mixing
    scale = weight.abs().amax(dim=1) / 127
    codes = quantization_embeddinggemma.gptq_round(weight, scale, 127, inputs.t() @ inputs)
    assert codes.dtype == torch.int8 and codes.abs().max() <= 127
    nearest = (weight / scale[:, None]).round()
    assert (codes.float() - nearest).abs().max() <= 3  # the same grid, a few steps apart at most

    def error(c):
        return float((inputs @ (c.float() * scale[:, None]).t() - inputs @ weight.t()).norm())

    assert error(codes) < 0.8 * error(nearest)


def test_int8_activations_use_7_bits_without_vnni(monkeypatch, tiny_tokenizer):
    """Without VNNI (AVX2), u8 x s8 pair sums are 16-bit: activations keep 7 bits so that they cannot saturate."""
    monkeypatch.setattr(quantization_embeddinggemma, "cpu_has_vnni", lambda: False)
    model = quantize_int8(tiny_model(), tokenizer=tiny_tokenizer)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert {(m.levels, m.activation_levels) for m in layers} == {(127, 63)}
    monkeypatch.setattr(quantization_embeddinggemma, "cpu_has_vnni", lambda: True)
    model = quantize_int8(tiny_model(), tokenizer=tiny_tokenizer)
    assert {(m.levels, m.activation_levels) for m in model.modules() if isinstance(m, Int8Linear)} == {(127, 127)}


def test_int8_does_not_saturate_on_avx2_kernels():
    """oneDNN capped at AVX2 (the kernels of a CPU without VNNI, here on any x86 CPU): full-range codes saturate and
    give a wrong product; the levels int8_levels() picks there give the right one."""
    code = (
        "import torch, quantization_embeddinggemma as q\n"
        "w, x = torch.full((16, 256), 0.5), torch.ones(4, 256)\n"
        "levels = q.int8_levels()\n"
        "print(levels, q.Int8Linear(w, None, levels[0], activation_levels=levels[1])(x)[0, 0].item(),"
        " q.Int8Linear(w, None, 127, activation_levels=127)(x)[0, 0].item())\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    levels, picked, full_range = result.stdout.strip().rsplit(" ", 2)
    assert levels == "(127, 63)" and float(picked) == pytest.approx(128.0, rel=1e-3)
    assert abs(float(full_range) - 128.0) > 1.0  # the saturation this guards against (no longer seen: update test)


def test_int8_skip_keeps_those_products_in_float(tiny_tokenizer):
    model = quantize_int8(tiny_model(), skip=("mlp.down_proj", "self_attn.o_proj"), tokenizer=tiny_tokenizer)
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj) is EmbeddingGemmaLinear and type(layer.self_attn.o_proj) is EmbeddingGemmaLinear
    assert isinstance(layer.self_attn.q_proj, Int8Part) and isinstance(layer.mlp.gate_proj, Int8Part)


def test_int8_refuses_what_it_cannot_do(tiny_tokenizer):
    with pytest.raises(ValueError, match="has no tokenizer"):
        quantize_int8(tiny_model())  # calibration needs text, and text a tokenizer
    for bad, message in (
        ({"rotation": 3}, "power of two"),
        ({"smoothing": 2.0}, "must lie in"),
        ({"rounding": "x"}, "gptq"),
    ):
        with pytest.raises(ValueError, match=message):
            quantize_int8(tiny_model(), tokenizer=tiny_tokenizer, **bad)
    with pytest.raises(ValueError, match="calibration_texts is empty"):
        quantize_int8(tiny_model(), tokenizer=tiny_tokenizer, calibration_texts=[])
    model = quantize_int8(tiny_model(), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(model, tokenizer=tiny_tokenizer)
    plain = quantize_int8(tiny_model(), rounding="nearest", rotation=0)  # no calibration: no tokenizer needed
    assert isinstance(plain.model.layers[0].mlp.down_proj, Int8Linear)


def test_int8_at_load_and_refused_when_saving(tiny_converted_dir, tmp_path):
    model = EmbeddingGemmaModel.from_pretrained(tiny_converted_dir, quantize="int8")  # calibrated with its tokenizer
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Part)
    vectors = model.encode(["a dog", "the red planet"])
    assert vectors.shape == (2, model.config.embedding_dim) and np.isfinite(vectors).all()
    with pytest.raises(ValueError, match="cannot be saved"):
        model.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists() or not any((tmp_path / "int8").iterdir())
    with pytest.raises(ValueError, match="quantize='int4' is not supported"):
        EmbeddingGemmaModel.from_pretrained(tiny_converted_dir, quantize="int4")
