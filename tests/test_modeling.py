"""Parity of the encoder and head with transformers' Gemma3TextModel(use_bidirectional_attention=True) and
sentence-transformers' Pooling/Dense/Normalize on the same weights (float32: max abs <= 1e-5)."""

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.models import Dense, Normalize, Pooling
from transformers import Gemma3TextModel

from configuration_embeddinggemma import POOLING_MODES
from helpers import ATOL, LENGTHS, make_batch, tiny_model
from modeling_embeddinggemma import EmbeddingGemmaModel, bidirectional_attention_mask
from testing_embeddinggemma import reference_gemma3_config


def reference_from(model, attn):
    """transformers' Gemma3TextModel + sentence-transformers' head modules holding `model`'s weights."""
    backbone = Gemma3TextModel(reference_gemma3_config(attn_implementation=attn)).eval()
    backbone.load_state_dict({k.removeprefix("model."): v for k, v in model.model.state_dict().items()})
    head = [Pooling(model.config.hidden_size, "mean")]
    for layer in model.dense:
        head.append(Dense(layer.in_features, layer.out_features, bias=False, activation_function=torch.nn.Identity()))
        head[-1].linear.weight.data.copy_(layer.weight)
    return backbone, head


def run_reference(backbone, head, input_ids, attention_mask, normalize=True):
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    features = {"token_embeddings": hidden.last_hidden_state, "attention_mask": attention_mask}
    for module in head:
        features = module(features)
    if normalize:
        features = Normalize()(features)
    return hidden, features["sentence_embedding"]


PATHS = [("eager", "reference"), ("sdpa", "reference"), ("sdpa", "packed"), ("flex_attention", "reference")]


@pytest.mark.parametrize("attn, path", PATHS, ids=[f"{path}-{attn}" for attn, path in PATHS])
@torch.no_grad()
def test_matches_transformers_gemma3_and_sentence_transformers_head(attn, path):
    model = tiny_model(attn)
    backbone, head = reference_from(model, "sdpa" if attn == "flex_attention" else attn)
    input_ids, attention_mask = make_batch()
    ref_hidden, ref_embedding = run_reference(backbone, head, input_ids, attention_mask)
    per_layer = path == "reference"  # per-layer outputs are the reference path's; the packed path gives the last
    assert model.model.select_path(output_hidden_states=per_layer) == path
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=per_layer)

    real = attention_mask.bool()  # padding rows carry no meaning (and differ by design: see the mask docstring)
    assert out.last_hidden_state.shape == (4, 16, 64)
    assert (out.last_hidden_state - ref_hidden.last_hidden_state)[real].abs().max() <= ATOL
    if per_layer:
        assert len(out.hidden_states) == len(ref_hidden.hidden_states) == model.config.num_hidden_layers + 1
        for ours, theirs in zip(out.hidden_states, ref_hidden.hidden_states):
            assert (ours - theirs)[real].abs().max() <= ATOL
    assert out.sentence_embedding.shape == (4, 48)
    assert (out.sentence_embedding - ref_embedding).abs().max() <= ATOL
    # The comparison can fail: the outputs are far from trivial and differ between texts.
    assert ref_embedding.std(0).mean() > 1e-2


@pytest.mark.parametrize("path", ["packed", "reference"])
@pytest.mark.parametrize("mode", POOLING_MODES)
@torch.no_grad()
def test_every_pooling_mode_matches_sentence_transformers(mode, path):
    model = tiny_model(pooling_mode=mode)
    model.config.use_packed_path = path == "packed"
    backbone, head = reference_from(model, "sdpa")
    head[0] = Pooling(model.config.hidden_size, mode)
    for lengths in ([16, 9, 3, 12], [7, 7]):
        input_ids, attention_mask = make_batch(lengths)
        _, expected = run_reference(backbone, head, input_ids, attention_mask)
        got = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
        assert (got - expected).abs().max() <= ATOL, (mode, lengths)
    # the modes really differ (mean_sqrt_len_tokens only rescales the mean, which the normalisation removes)
    if mode not in ("mean", "mean_sqrt_len_tokens"):
        mean_model = tiny_model()
        assert (
            mean_model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding - got
        ).abs().max() > 1e-3


@torch.no_grad()
def test_window_is_used_and_is_plus_minus_radius():
    # One sliding layer, window 4 -> radius 2: token 0 sees tokens 0..2 and nothing beyond.
    model = tiny_model(num_hidden_layers=1, layer_types=["sliding_attention"])
    input_ids, _ = make_batch([16])
    base = model(input_ids=input_ids).last_hidden_state[0, 0]
    for position, changes in [(2, True), (3, False), (15, False)]:
        edited = input_ids.clone()
        edited[0, position] = 5 if input_ids[0, position] != 5 else 6
        moved = (model(input_ids=edited).last_hidden_state[0, 0] - base).abs().max() > 1e-6
        assert moved == changes, f"token 0 {'should' if changes else 'should not'} see position {position}"


def test_mask_matches_the_reference_radius_and_never_masks_a_whole_row():
    padding = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    positions = torch.arange(8)[None]
    mask = bidirectional_attention_mask(padding, positions, (2, 2))[0, 0]
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    expected = ((i - j).abs() <= 2) & padding[0][None, :]
    expected |= torch.eye(8, dtype=torch.bool)  # padding queries attend to themselves only
    assert torch.equal(mask, expected)
    assert mask.any(-1).all()
    assert bidirectional_attention_mask(torch.ones(2, 8, dtype=torch.bool), positions.expand(2, 8), None) is None


@torch.no_grad()
def test_eager_and_sdpa_agree():
    input_ids, attention_mask = make_batch()
    eager = tiny_model("eager")(input_ids=input_ids, attention_mask=attention_mask)
    sdpa = tiny_model("sdpa")(input_ids=input_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    assert (eager.last_hidden_state - sdpa.last_hidden_state)[real].abs().max() <= ATOL
    assert (eager.sentence_embedding - sdpa.sentence_embedding).abs().max() <= ATOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_padding_anywhere_does_not_change_a_text(attn):
    model = tiny_model(attn)
    input_ids, attention_mask = make_batch()
    batched = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    for row, n in enumerate(LENGTHS):
        alone = model(input_ids=input_ids[row : row + 1, :n]).sentence_embedding[0]
        assert (alone - batched[row]).abs().max() <= ATOL
        # left padding, and padding in the middle of the text
        for layout in ("left", "middle"):
            ids, mask = torch.zeros(1, n + 5, dtype=torch.long), torch.zeros(1, n + 5, dtype=torch.long)
            slots = torch.arange(5, n + 5) if layout == "left" else torch.cat([torch.arange(1), torch.arange(6, n + 5)])
            ids[0, slots], mask[0, slots] = input_ids[row, :n], 1
            other = model(input_ids=ids, attention_mask=mask).sentence_embedding[0]
            assert (other - alone).abs().max() <= ATOL, layout


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_no_nan_anywhere_with_heavy_padding(attn):
    model = tiny_model(attn)
    input_ids, attention_mask = make_batch([16, 1, 2])
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert torch.isfinite(out.last_hidden_state).all()  # padding rows too
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    assert torch.isfinite(out.sentence_embedding).all()


@torch.no_grad()
def test_inputs_embeds_equal_input_ids():
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    from_ids = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    embeds = model.get_input_embeddings()(input_ids)
    from_embeds = model(inputs_embeds=embeds, attention_mask=attention_mask).sentence_embedding
    assert torch.equal(from_ids, from_embeds)


@torch.no_grad()
def test_truncate_dim_is_truncate_then_renormalise():
    model = tiny_model()
    backbone, head = reference_from(model, "sdpa")
    input_ids, attention_mask = make_batch()
    _, unnormalised = run_reference(backbone, head, input_ids, attention_mask, normalize=False)
    for dim in model.config.matryoshka_dims:
        out = model(input_ids=input_ids, attention_mask=attention_mask, truncate_dim=dim).sentence_embedding
        assert out.shape == (4, dim)
        assert (out - F.normalize(unnormalised[:, :dim], dim=-1)).abs().max() <= ATOL
        assert torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-6)


def test_bad_truncate_dim_names_the_matryoshka_dims():
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    with pytest.raises(ValueError, match=r"truncate_dim=20 is not one of .*\[48, 32, 16\]"):
        model(input_ids=input_ids, attention_mask=attention_mask, truncate_dim=20)


def test_float16_is_refused_with_the_alternatives(tmp_path):
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    with pytest.raises(ValueError, match=r"float16.*bfloat16 or torch\.float32"):
        model.half()(input_ids=input_ids, attention_mask=attention_mask)
    tiny_model().save_pretrained(tmp_path)
    for kwargs in ({"dtype": torch.float16}, {"torch_dtype": torch.float16}, {"dtype": "float16"}):
        with pytest.raises(ValueError, match="bfloat16"):
            EmbeddingGemmaModel.from_pretrained(tmp_path, **kwargs)


@torch.no_grad()
def test_bfloat16_runs_and_stays_close_to_float32():
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    full = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    half = model.to(torch.bfloat16)(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    assert half.dtype == torch.float32  # normalised and returned in float32 (tests/test_precision.py)
    assert F.cosine_similarity(half, full).min() >= 0.99


def test_empty_batch_and_bad_mask_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty batch"):
        model(input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        model(input_ids=torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\); expected .*\(2, 4\)"):
        model(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
