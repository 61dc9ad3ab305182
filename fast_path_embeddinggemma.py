# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's packed inference path ("fast path"): the encoder on the real tokens of a batch only.

`EmbeddingGemmaTextModel.select_path` decides, in one place, whether a forward runs here or on the reference path
(the padded batch through transformers' attention interface). This file holds only how the packed path computes:

- the real tokens of a padded (B, L) batch are laid end to end, (T, hidden), so embeddings, projections, norms and
  the MLP never see padding (`PackedBatch`);
- attention runs per text (rows of equal length share one SDPA call), the query heads that share a key/value head
  folded into the query length; on texts longer than the window, sliding layers attend block by block to the band of
  keys the window keeps (`packed_attention`);
- RMSNorm in one reduction and one multiply, each post-norm applied while adding the residual, rotary without the
  rotated copy, and the MLP's product written into the activation's buffer: in place, so only without autograd;
- float32 and bfloat16 products on the CPU through oneDNN with each weight packed once into its blocked layout (faster
  than torch's default product for these shapes; benchmarks/bench_inference.py).

The kernels are chosen once per forward (`PackedForward`); the packed weights live in the model's `FastPath` object,
never in parameters, buffers or module state, so they are never saved. Same values as the reference path to float32
rounding (tests/test_fast_path.py: 1e-5).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


# Query rows per block when a sliding layer attends only to the band of keys its window keeps.
BAND_BLOCK = 128


@dataclass
class PackedBatch:
    """Where the real tokens of a padded (B, L) batch are once packed into (T, ...)."""

    batch: int
    length: int
    index: torch.Tensor | None  # (T,) flat positions of the real tokens in B * L; None when nothing is padding
    positions: torch.Tensor  # (T,) 0, 1, 2, ... within each row
    groups: list[tuple[int, int, int]]  # (first token, rows, tokens per row) for runs of rows of equal length
    masks: dict = field(default_factory=dict)  # window masks by geometry, shared by all layers of a forward

    @classmethod
    def from_padding_mask(cls, padding_mask: torch.Tensor) -> "PackedBatch":
        batch, length = padding_mask.shape
        lengths = padding_mask.sum(-1)
        sizes = lengths.tolist()  # data-dependent: why this path never runs under trace, export or compile
        index = None if all(size == length for size in sizes) else padding_mask.reshape(-1).nonzero().squeeze(-1)
        sequence_ids = torch.repeat_interleave(torch.arange(batch, device=padding_mask.device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths  # first token of each row
        positions = torch.arange(sum(sizes), device=padding_mask.device) - starts[sequence_ids]
        groups, start = [], 0
        for size in sizes:
            if size and groups and groups[-1][2] == size:
                first, rows, _ = groups[-1]
                groups[-1] = (first, rows + 1, size)
            elif size:
                groups.append((start, 1, size))
            start += size
        return cls(batch, length, index, positions, groups)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (T, ...)"""
        flat = padded.reshape(self.batch * self.length, *padded.shape[2:])
        return flat if self.index is None else flat[self.index]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, L, ...), zeros at padding."""
        if self.index is None:
            return packed.reshape(self.batch, self.length, *packed.shape[1:])
        flat = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        return flat.index_copy_(0, self.index, packed).reshape(self.batch, self.length, *packed.shape[1:])

    def window_mask(self, queries: tuple[int, int], keys: tuple[int, int], group: int, window, dtype, device):
        """Additive (queries * group, keys) mask: 0 where -left <= key - query <= right, -inf elsewhere (no row is
        all -inf: a query always sees itself). Additive, so SDPA does not convert it on every call; cached by
        geometry, so the sliding layers of a forward share it."""
        geometry = (queries[0] - keys[0], queries[1] - queries[0], keys[1] - keys[0], group, window, dtype)
        if geometry not in self.masks:
            left, right = window
            query = torch.arange(queries[0], queries[1], device=device).repeat_interleave(group)
            distance = torch.arange(keys[0], keys[1], device=device)[None, :] - query[:, None]
            outside = (distance < -left) | (distance > right)
            mask = torch.zeros(outside.shape, dtype=dtype, device=device)
            self.masks[geometry] = mask.masked_fill_(outside, float("-inf"))
        return self.masks[geometry]


def band_blocks(length: int, window: tuple[int, int] | None) -> list[tuple[int, int, int, int]]:
    """(first query, last query + 1, first key, last key + 1) blocks covering a text of `length` tokens: one block
    when the band is (nearly) everything, else `BAND_BLOCK` queries each with the keys their window keeps."""
    if window is None or length <= BAND_BLOCK + window[0] + window[1]:
        return [(0, length, 0, length)]
    left, right = window
    return [
        (first, min(first + BAND_BLOCK, length), max(0, first - left), min(length, first + BAND_BLOCK + right))
        for first in range(0, length, BAND_BLOCK)
    ]


def packed_attention(query, key, value, packed: PackedBatch, window, scaling) -> torch.Tensor:
    """Bidirectional attention over packed tokens: query (T, nh, hd), key/value (T, n_kv, hd) -> (T, nh, hd).

    Rows of equal length share one SDPA call. The query heads that share a key/value head are folded into the query
    length, so multi-query attention needs no repeated keys. On a sliding layer, a sequence longer than its window
    attends block by block (`BAND_BLOCK` queries) to the keys its window keeps, instead of to all keys and a mask.
    """
    tokens, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    output = torch.empty_like(query)
    for start, rows, length in packed.groups:
        stop = start + rows * length
        # (rows, n_kv, length * group, hd): query row r of a kv head is token r // group
        q = query[start:stop].view(rows, length, kv_heads, group, head_dim).transpose(1, 2)
        q = q.reshape(rows, kv_heads, length * group, head_dim)
        k = key[start:stop].view(rows, length, kv_heads, head_dim).transpose(1, 2)  # (rows, n_kv, length, hd)
        v = value[start:stop].view(rows, length, kv_heads, head_dim).transpose(1, 2)
        out = output[start:stop].view(rows, length, kv_heads, group, head_dim)
        for q_start, q_stop, k_start, k_stop in band_blocks(length, window):
            mask = None
            if window is not None and not (q_stop - 1 - k_start <= window[0] and k_stop - 1 - q_start <= window[1]):
                mask = packed.window_mask(
                    (q_start, q_stop), (k_start, k_stop), group, window, query.dtype, query.device
                )
            attended = F.scaled_dot_product_attention(
                q[:, :, q_start * group : q_stop * group],
                k[:, :, k_start:k_stop],
                v[:, :, k_start:k_stop],
                attn_mask=mask,
                scale=scaling,
            )  # (rows, n_kv, (q_stop - q_start) * group, hd)
            out[:, q_start:q_stop] = attended.view(rows, kv_heads, q_stop - q_start, group, head_dim).transpose(1, 2)
    return output


def apply_rotary_packed(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE for packed x (T, heads, head_dim) with cos/sin (T, head_dim), in three passes instead of five: x * cos,
    then each half gains -x2 * sin or x1 * sin in place on the new tensor (no rotated copy, no negation)."""
    half = x.shape[-1] // 2
    sin = sin[:, None, :half]  # both halves of the table are equal
    output = x * cos[:, None]
    output[..., :half].addcmul_(x[..., half:], sin, value=-1.0)
    output[..., half:].addcmul_(x[..., :half], sin)
    return output


class OptimizerSteps:
    """Counts optimizer steps in this process (a global post-step hook of torch.optim). Fused optimizers (AdamW
    `fused=True`, the default of transformers' Trainer) update parameters without bumping their version counters, so
    a packed weight keyed on the version alone would go stale during training; the count is part of the key."""

    count = 0
    registered = False

    @classmethod
    def register(cls) -> None:
        if not cls.registered:
            from torch.optim.optimizer import register_optimizer_step_post_hook

            register_optimizer_step_post_hook(cls.bump)
            cls.registered = True

    @classmethod
    def bump(cls, *_) -> None:
        cls.count += 1


class FastPath:
    """The packed path of one `EmbeddingGemmaTextModel`, with the oneDNN-packed copies of its float32 weights (not
    parameters or buffers: never saved; repacked when a weight changes or moves)."""

    def __init__(self):
        self.onednn = (
            hasattr(torch.ops, "mkldnn")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.mkldnn.is_available()
        )
        self.weights: dict[int, tuple[tuple, torch.Tensor]] = {}
        OptimizerSteps.register()

    def __deepcopy__(self, memo):
        """A copy of the model gets an empty cache: oneDNN's packed tensors cannot be copied (nor pickled), and the
        copy's weights are other tensors anyway."""
        return FastPath()

    def __getstate__(self):
        return {**self.__dict__, "weights": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        OptimizerSteps.register()  # an unpickled model in a new process counts optimizer steps too

    def __call__(self, encoder, input_ids, padding_mask, inputs_embeds=None):
        """The encoder's layers on the real tokens of the batch: (final hidden states (T, hidden), PackedBatch)."""
        return PackedForward(self, encoder, padding_mask).run(input_ids, inputs_embeds)

    def onednn_linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for float32 or bfloat16 2-D x on the CPU without autograd, on oneDNN with the weight packed into
        its blocked layout on first use (repacked when it changes, moves or any optimizer steps); `module(x)` if torch
        cannot."""
        weight = module.weight
        key = (weight.data_ptr(), weight._version, weight.shape, OptimizerSteps.count)
        cached = self.weights.get(id(module))
        if cached is None or cached[0] != key:
            try:
                cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
            except RuntimeError:  # a build without it: plain products from now on, for this model
                self.onednn = False
                return module(x)
            self.weights[id(module)] = cached
        return torch.ops.mkldnn._linear_pointwise(x, cached[1], module.bias, "none", [], "")


class PackedForward:
    """One forward on the packed path; its kernels are chosen here, once: in-place element-wise work when autograd is
    off, oneDNN products with packed weights for float32 and bfloat16 on the CPU when autograd is off."""

    def __init__(self, fast_path: FastPath, encoder, padding_mask: torch.Tensor):
        self.fast_path = fast_path
        self.encoder = encoder
        self.packed = PackedBatch.from_padding_mask(padding_mask)
        self.in_place = not torch.is_grad_enabled()
        weight = encoder.embed_tokens.weight
        self.fused_norms = self.in_place and weight.dtype in (torch.float32, torch.bfloat16)
        self.onednn = self.fused_norms and weight.device.type == "cpu" and fast_path.onednn

    def run(self, input_ids, inputs_embeds):
        encoder, packed = self.encoder, self.packed
        if input_ids is not None:  # embed only the real tokens
            hidden_states = encoder.embed_tokens(packed.pack(input_ids))
        else:  # a copy: the residual stream is updated in place
            hidden_states = packed.pack(inputs_embeds).clone()
        config = encoder.config
        windows = {"full_attention": None, "sliding_attention": config.attention_window}
        rotary = {t: encoder.rotary_emb(hidden_states, packed.positions, t) for t in set(config.layer_types)}
        for layer in encoder.layers:
            attention_input = self.norm(layer.input_layernorm, hidden_states)
            attention = self.attention(
                layer.self_attn, attention_input, rotary[layer.attention_type], windows[layer.attention_type]
            )
            hidden_states = self.norm(layer.post_attention_layernorm, attention, residual=hidden_states)
            mlp = self.mlp(layer.mlp, self.norm(layer.pre_feedforward_layernorm, hidden_states))
            hidden_states = self.norm(layer.post_feedforward_layernorm, mlp, residual=hidden_states)
        return self.norm(encoder.norm, hidden_states), packed

    def linear(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for 2-D x; a float32 `nn.Linear` on the CPU without autograd runs on oneDNN, unless it has hooks
        (then it is called as a module, so that they see it: int8 calibration, users' own)."""
        hooked = module._forward_hooks or module._forward_pre_hooks
        if (
            self.onednn
            and self.fast_path.onednn
            and type(module) is nn.Linear
            and not hooked
            and x.dtype == module.weight.dtype
        ):
            return self.fast_path.onednn_linear(module, x)
        return module(x)

    def norm(self, module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`module(x)`, plus `residual` when given. Fused without autograd: one reduction for the norm, one multiply,
        and the weight applied while adding to the residual stream, in place. In bfloat16 the norm is computed on a
        float32 copy, as Gemma's RMSNorm does, and rounded once before it joins the bfloat16 residual stream."""
        if not self.fused_norms:
            output = module(x)
            return output if residual is None else residual + output
        weight = 1.0 + module.weight.float()  # Gemma's zero-centred weight
        if x.dtype != torch.float32:
            output = x.float()
            inverse_rms = torch.linalg.vector_norm(output, dim=-1, keepdim=True).square_().div_(x.shape[-1])
            output = output.mul_(inverse_rms.add_(module.eps).rsqrt_()).mul_(weight).to(x.dtype)
            return output if residual is None else residual.add_(output)
        inverse_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        output = x * inverse_rms.add_(module.eps).rsqrt_()
        if residual is None:
            return output.mul_(weight)
        return residual.addcmul_(output, weight)

    def mlp(self, module, x: torch.Tensor) -> torch.Tensor:
        gate, up = module.project_gate_up(x, self.linear)
        activated = module.act_fn(gate)
        return self.linear(module.down_proj, activated.mul_(up) if self.in_place else activated * up)

    def attention(self, module, hidden_states, rotary, window) -> torch.Tensor:
        tokens = hidden_states.shape[0]
        query, key, value = module.project_qkv(hidden_states, self.linear)
        query = query.view(tokens, -1, module.head_dim)  # (T, nh, hd)
        key = key.view(tokens, -1, module.head_dim)  # (T, n_kv, hd)
        value = value.view(tokens, -1, module.head_dim)  # (T, n_kv, hd)
        if module.config.use_qk_norm:
            query, key = self.norm(module.q_norm, query), self.norm(module.k_norm, key)
        query, key = apply_rotary_packed(query, *rotary), apply_rotary_packed(key, *rotary)
        output = packed_attention(query, key, value, self.packed, window, module.scaling)
        return self.linear(module.o_proj, output.view(tokens, -1))
