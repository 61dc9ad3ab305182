"""The packed layout (packed_embeddinggemma.py: real tokens as one row, attention per text, band-only sliding
attention) against the reference layout (padded batch, one mask per layer type) on the same model: float32 max abs
<= 1e-5. The reference layout itself is checked against transformers' Gemma 3 and sentence-transformers in
test_modeling.py. Also: when the packed layout applies, and the inference kernels (in-place norms, oneDNN products
with packed weights) it shares with the reference layout when autograd is off."""

import copy

import pytest
import torch

import modeling_embeddinggemma
import packed_embeddinggemma
from configuration_embeddinggemma import POOLING_MODES
from helpers import ATOL, BF16_ATOL, count_calls, make_batch, tiny_model
from modeling_embeddinggemma import EmbeddingGemmaLinear
from packed_embeddinggemma import PackedBatch


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
    calls = count_calls(monkeypatch, modeling_embeddinggemma, "packed_attention_forward")
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


# ----------------------------------------------------------------------------------------------------------------
# encode's token budget
# ----------------------------------------------------------------------------------------------------------------


def test_inference_sees_weights_changed_through_data():
    """Writes through `.data` (PEFT's merge_and_unload) bump no version counter; the oneDNN copies must follow them."""
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding  # packs the weights
        for module in model.modules():
            if isinstance(module, EmbeddingGemmaLinear):
                module.weight.data.mul_(1.5)
        after = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
    reference = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding  # autograd: plain products
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, reference.detach(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooling_packed_tokens_equals_pooling_the_padded_batch(mode, dtype):
    """Pooling reads the packed tokens directly (no padded copy): each mode gives what it gives on the padded batch
    (left and right padding, rows of equal and of different lengths)."""
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]).bool()
    packed = PackedBatch.from_padding_mask(mask)
    hidden = packed.pack(torch.randn(5, 5, 8, generator=torch.Generator().manual_seed(0)).to(dtype))
    expected = modeling_embeddinggemma.pool(packed.unpack(hidden), mask, mode)
    pooled = modeling_embeddinggemma.pool(hidden, packed, mode)
    assert pooled.dtype == dtype
    torch.testing.assert_close(pooled, expected, atol=1e-6 if dtype == torch.float32 else 0, rtol=0)


def test_model_pools_the_packed_tokens(monkeypatch):
    model = tiny_model()
    input_ids, attention_mask = make_batch()
    calls = count_calls(monkeypatch, modeling_embeddinggemma, "pool_packed")
    fast, reference = both_paths(model, input_ids=input_ids, attention_mask=attention_mask)
    assert len(calls) == 1  # the packed forward only
    torch.testing.assert_close(fast.sentence_embedding, reference.sentence_embedding, atol=ATOL, rtol=0)
    real = attention_mask[..., None].bool()
    assert fast.last_hidden_state.shape == reference.last_hidden_state.shape  # padded for the output
    torch.testing.assert_close(fast.last_hidden_state * real, reference.last_hidden_state * real, atol=ATOL, rtol=0)
