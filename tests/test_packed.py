"""The packed path (packed real tokens, attention per sequence, band-only sliding attention, fewer-pass norms/rotary)
against the reference path (padded batch, one mask per layer type) on the same model: float32 max abs <= 1e-5.
The reference path itself is checked against transformers' Gemma 3 and sentence-transformers in test_modeling.py.
Also: when the packed path applies, the int8 option, the token budget of encode."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import modeling_embeddinggemma
import packed_embeddinggemma
import quantization_embeddinggemma
from conftest import REPO
from encoding_embeddinggemma import token_length_batches
from modeling_embeddinggemma import EmbeddingGemmaLinear, EmbeddingGemmaModel
from packed_embeddinggemma import PackedBatch
from quantization_embeddinggemma import Int8Linear, Int8Part, quantize_int8
from test_modeling import make_batch, tiny_model


ATOL = 1e-5  # float32
BF16_ATOL = 2e-2  # bfloat16 sentence embeddings: both paths round differently (3 significant digits)


def both_paths(model, **inputs):
    """(fast, reference) outputs of one model on one batch."""
    with torch.no_grad():
        model.config.use_packed_path = True
        fast = model(**inputs)
        model.config.use_packed_path = False
        reference = model(**inputs)
        model.config.use_packed_path = True
    return fast, reference


def assert_paths_agree(model, input_ids, attention_mask, atol=ATOL, **kwargs):
    fast, reference = both_paths(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    real = attention_mask.bool()
    torch.testing.assert_close(fast.sentence_embedding, reference.sentence_embedding, atol=atol, rtol=0)
    # Hidden states grow to O(10) here; compare them relative to their scale. Padding rows carry no meaning.
    scale = reference.last_hidden_state[real].abs().max()
    torch.testing.assert_close(
        fast.last_hidden_state[real] / scale, reference.last_hidden_state[real] / scale, atol=atol, rtol=0
    )


@pytest.mark.parametrize(
    "lengths",
    [
        [16, 9, 3, 12],  # mixed, longer than the +-2 window
        [40, 40, 33, 7, 7, 7, 1],  # runs of equal lengths share one attention call; a one-token text
        [21, 21, 21],  # no padding at all
    ],
)
@pytest.mark.parametrize("band_block", [4, 128])  # 4: sliding layers attend band by band; 128: one masked block
def test_packed_path_equals_reference_path(lengths, band_block, monkeypatch):
    monkeypatch.setattr(packed_embeddinggemma, "BAND_BLOCK", band_block)
    model = tiny_model()
    input_ids, attention_mask = make_batch(lengths)
    assert_paths_agree(model, input_ids, attention_mask)
    assert_paths_agree(model, input_ids, attention_mask, truncate_dim=32)


def test_packed_path_handles_left_and_middle_padding(monkeypatch):
    monkeypatch.setattr(packed_embeddinggemma, "BAND_BLOCK", 4)
    model = tiny_model()
    input_ids, attention_mask = make_batch([16, 9, 3, 12])
    left_ids, left_mask = input_ids.clone(), attention_mask.clone()
    for row in range(len(left_ids)):  # move the padding to the left of each row
        n = int(attention_mask[row].sum())
        left_ids[row] = torch.cat([input_ids[row, n:], input_ids[row, :n]])
        left_mask[row] = torch.cat([attention_mask[row, n:], attention_mask[row, :n]])
    assert_paths_agree(model, left_ids, left_mask)
    middle_mask = attention_mask.clone()
    middle_mask[0, 5:8] = 0  # holes inside a text
    assert_paths_agree(model, input_ids, middle_mask)
    # and the packed path gives each text what it gives it alone
    fast_left, _ = both_paths(model, input_ids=left_ids, attention_mask=left_mask)
    fast_right, _ = both_paths(model, input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(fast_left.sentence_embedding, fast_right.sentence_embedding, atol=ATOL, rtol=0)


def test_packed_path_with_inputs_embeds_leaves_them_untouched():
    model = tiny_model()
    input_ids, _ = make_batch([12, 12])
    embeds = model.get_input_embeddings()(input_ids)
    copy = embeds.clone()
    with torch.no_grad():
        from_embeds = model(inputs_embeds=embeds).sentence_embedding
        from_ids = model(input_ids=input_ids).sentence_embedding
    assert torch.equal(embeds, copy)  # the residual stream is updated in place, on a copy
    torch.testing.assert_close(from_embeds, from_ids, atol=ATOL, rtol=0)


def test_packed_path_runs_only_where_it_applies(monkeypatch):
    model = tiny_model()
    calls = []
    original = modeling_embeddinggemma.packed_attention_forward
    monkeypatch.setattr(
        modeling_embeddinggemma, "packed_attention_forward", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    input_ids, attention_mask = make_batch()
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
        assert len(calls) == layers  # inference: the packed layout's attention, in every layer
        model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=torch.arange(input_ids.shape[1])[None])
        model.config.use_packed_path = False
        model(input_ids=input_ids, attention_mask=attention_mask)
        model.config.use_packed_path = True
        model.config._attn_implementation = "eager"
        model(input_ids=input_ids, attention_mask=attention_mask)
        model.config._attn_implementation = "sdpa"
        model.train()
        model(input_ids=input_ids, attention_mask=attention_mask)
    assert len(calls) == layers  # none of those took it


def test_packed_path_gradients_match_the_reference_path():
    model = tiny_model()  # eval mode, but with autograd on: the packed path must not update anything in place
    input_ids, attention_mask = make_batch([16, 9])
    grads = []
    for fast in (True, False):
        model.config.use_packed_path = fast
        model.zero_grad()
        model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding.sum().backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    model.config.use_packed_path = True
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["fused", "foreach", "in-place copy"])
def test_packed_path_sees_weights_changed_by_any_optimizer(optimizer):
    """A fused AdamW (transformers' Trainer default) updates parameters without bumping their version counters; the
    packed (oneDNN) weights must still be repacked, or encode during training silently uses the old weights."""
    model = tiny_model()
    input_ids, attention_mask = make_batch([16, 9])
    assert_paths_agree(model, input_ids, attention_mask)  # packs the weights
    before = both_paths(model, input_ids=input_ids, attention_mask=attention_mask)[0].sentence_embedding
    if optimizer == "in-place copy":
        with torch.no_grad():
            for parameter in model.model.layers[0].parameters():
                parameter.copy_(parameter * 1.5)
    else:
        step = torch.optim.AdamW(model.parameters(), lr=1e-2, **{optimizer: True})
        model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding.sum().backward()
        step.step()
    fast, reference = both_paths(model, input_ids=input_ids, attention_mask=attention_mask)
    assert (fast.sentence_embedding - before).abs().max() > 1e-3  # the weights did change
    torch.testing.assert_close(fast.sentence_embedding, reference.sentence_embedding, atol=ATOL, rtol=0)


def test_packed_path_bfloat16_stays_close_to_the_reference_path():
    model = tiny_model().to(torch.bfloat16)
    input_ids, attention_mask = make_batch()
    fast, reference = both_paths(model, input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(
        fast.sentence_embedding.float(), reference.sentence_embedding.float(), atol=BF16_ATOL, rtol=0
    )


def test_packed_batch_layout():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    packed = PackedBatch.from_padding_mask(mask)
    assert packed.positions.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert packed.groups == [(0, 1, 3), (3, 1, 2), (5, 1, 4)]
    values = torch.arange(16.0).reshape(4, 4)
    assert packed.unpack(packed.pack(values)).tolist() == (values * mask).tolist()
    assert PackedBatch.from_padding_mask(torch.ones(3, 5, dtype=torch.bool)).groups == [(0, 3, 5)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; the GPU path is checked on one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_path_on_gpu(dtype):
    model = tiny_model().to("cuda", dtype)
    input_ids, attention_mask = make_batch([40, 33, 7, 1])
    assert_paths_agree(
        model, input_ids.cuda(), attention_mask.cuda(), atol=ATOL if dtype == torch.float32 else BF16_ATOL
    )


# ----------------------------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------------------------


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


def test_a_model_that_has_run_can_be_copied_and_pickled():
    """The packed-weight cache (oneDNN tensors, which cannot be copied) is not part of a copy."""
    import pickle

    model = tiny_model()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            got = copied(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_hooks_on_a_linear_layer_see_the_packed_path():
    """A hooked layer is called as a module on the packed path (int8 calibration relies on it, and so may users)."""
    model = tiny_model()
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    input_ids, attention_mask = make_batch([16, 9, 3, 12])
    assert model.model.select_path() == "packed"
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    assert seen == [torch.Size([1, 16 + 9 + 3 + 12, model.config.hidden_size])]  # the real tokens, packed


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


# ----------------------------------------------------------------------------------------------------------------
# encode's token budget
# ----------------------------------------------------------------------------------------------------------------


def test_token_budget_batches():
    assert token_length_batches([10] * 10, batch_size=None, max_batch_tokens=40) == [4, 4, 2]
    assert token_length_batches([3] * 100, batch_size=None, max_batch_tokens=4096) == [100]
    assert token_length_batches([3] * 100, batch_size=32, max_batch_tokens=4096) == [32, 32, 32, 4]
    assert token_length_batches([5000, 10], batch_size=None, max_batch_tokens=4096) == [1, 1]


def test_encode_default_batches_by_tokens(tiny_converted_dir, monkeypatch):
    model = EmbeddingGemmaModel.from_pretrained(tiny_converted_dir)
    texts = ["a dog"] * 50 + ["the man is playing guitar on the red planet mars in the blue sky"] * 5
    sizes = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda **k: sizes.append(tuple(k["input_ids"].shape)) or original(**k))
    first = model.encode(texts)
    assert len(sizes) == 1 and sizes[0][0] == 55  # one batch: far below 4,096 tokens, and no count limit
    sizes.clear()
    second = model.encode(texts, max_batch_tokens=60)
    assert len(sizes) > 1 and all(rows * length <= 60 for rows, length in sizes)  # rows x longest
    np.testing.assert_allclose(first, second, atol=ATOL)
    with pytest.raises(ValueError, match="max_batch_tokens=0 must be a positive int"):
        model.encode(texts, max_batch_tokens=0)
