# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's packed batch layout: the real tokens of a padded (B, L) batch laid end to end as one row, (1, T),
and the attention function that runs on it.

The model's layers are the same on both layouts (modeling_embeddinggemma.py): embeddings, projections, norms and the
MLP run on (1, T, hidden) and never see padding. Only attention differs, and it is an attention function in
transformers' signature (`packed_attention_forward`), chosen in `EmbeddingGemmaTextModel.select_path`, whose mask is
the `PackedBatch` of the forward with the layer type's window:

- rows of equal length share one SDPA call; the query heads that share a key/value head are folded into the query
  length, so multi-query attention needs no repeated keys;
- on texts longer than the window, sliding layers attend block by block to the band of keys the window keeps
  (`band_blocks`); the window rule itself is `within_window`, written once in configuration_embeddinggemma.py.

Pooling reads the packed tokens directly (`pool_packed`, as sentence-transformers v6's `Pooling._forward_flattened`):
the padded (B, L, hidden) states are made only for a `last_hidden_state` that is returned.

The packed layout's shapes depend on the data, so it never runs under trace, export or compile.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


try:  # modules of a package (the Hub's remote code, or an installed copy)
    from .configuration_embeddinggemma import within_window
except ImportError:  # top-level modules (this repository on sys.path)
    from configuration_embeddinggemma import within_window


# Query rows per block when a sliding layer attends only to the band of keys its window keeps.
BAND_BLOCK = 128


@dataclass
class PackedBatch:
    """Where the real tokens of a padded (B, L) batch are once packed into (T, ...)."""

    batch: int
    length: int
    index: torch.Tensor | None  # (T,) flat positions of the real tokens in B * L; None when nothing is padding
    positions: torch.Tensor  # (T,) 0, 1, 2, ... within each row
    sequence_ids: torch.Tensor  # (T,) the row each token belongs to
    lengths: torch.Tensor  # (B,) real tokens per row (each >= 1: the model rejects all-padding rows)
    groups: list[tuple[int, int, int]]  # (first token, rows, tokens per row) for runs of rows of equal length
    masks: dict = field(default_factory=dict)  # window masks by geometry, shared by all layers of a forward

    @classmethod
    def from_padding_mask(cls, padding_mask: torch.Tensor) -> "PackedBatch":
        batch, length = padding_mask.shape
        lengths = padding_mask.sum(-1)
        sizes = lengths.tolist()  # data-dependent: why this layout never runs under trace, export or compile
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
        return cls(batch, length, index, positions, sequence_ids, lengths, groups)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (1, T, ...)"""
        flat = padded.reshape(self.batch * self.length, *padded.shape[2:])
        return (flat if self.index is None else flat[self.index])[None]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(1, T, ...) -> (B, L, ...), zeros at padding."""
        packed = packed[0]
        if self.index is None:
            return packed.reshape(self.batch, self.length, *packed.shape[1:])
        flat = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        return flat.index_copy_(0, self.index, packed).reshape(self.batch, self.length, *packed.shape[1:])

    def window_mask(self, queries: tuple[int, int], keys: tuple[int, int], group: int, window, dtype, device):
        """Additive (queries * group, keys) mask from `within_window`: 0 where allowed, -inf elsewhere (no row is all
        -inf: a query always sees itself). Additive, so SDPA does not convert it on every call; cached by geometry, so
        the sliding layers of a forward share it."""
        geometry = (queries[0] - keys[0], queries[1] - queries[0], keys[1] - keys[0], group, window, dtype)
        if geometry not in self.masks:
            query = torch.arange(queries[0], queries[1], device=device).repeat_interleave(group)
            distance = torch.arange(keys[0], keys[1], device=device)[None, :] - query[:, None]
            mask = torch.zeros(distance.shape, dtype=dtype, device=device)
            self.masks[geometry] = mask.masked_fill_(~within_window(distance, window), float("-inf"))
        return self.masks[geometry]


def pool_packed(hidden_states: torch.Tensor, packed: PackedBatch, mode: str = "mean") -> torch.Tensor:
    """`pool` (modeling_embeddinggemma.py) on packed tokens: (1, T, H) -> (B, H), the same reductions per row, sums
    in float32."""
    hidden = hidden_states[0]
    rows = packed.sequence_ids
    if mode in ("mean", "mean_sqrt_len_tokens", "weightedmean"):
        values, counts = hidden.float(), packed.lengths.float()
        if mode == "weightedmean":  # weights 1, 2, ... over each row's tokens
            weights = packed.positions.float() + 1
            values, counts = values * weights[:, None], counts * (counts + 1) / 2
        summed = values.new_zeros(packed.batch, hidden.shape[-1]).index_add_(0, rows, values)
        counts = counts[:, None]
        return (summed / (counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts)).to(hidden.dtype)
    if mode == "max":
        out = hidden.new_full((packed.batch, hidden.shape[-1]), float("-inf"))
        return out.index_reduce_(0, rows, hidden, "amax")
    starts = torch.cumsum(packed.lengths, 0) - packed.lengths
    if mode == "cls":
        return hidden[starts]
    if mode == "lasttoken":
        return hidden[starts + packed.lengths - 1]
    raise ValueError(f"pooling_mode={mode!r} is not supported.")


@dataclass
class PackedAttentionMask:
    """The attention mask of the packed layout for one layer type: the batch's geometry and the layer's window."""

    packed: PackedBatch
    window: tuple[int, int] | None


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


def packed_attention_forward(module, query, key, value, attention_mask: PackedAttentionMask, scaling, **kwargs):
    """Bidirectional attention over packed tokens, in transformers' attention-function signature: query
    (1, nh, T, hd), key/value (1, n_kv, T, hd) -> ((1, T, nh, hd), None). `attention_mask` is the forward's
    `PackedAttentionMask`; each text attends only to itself."""
    packed, window = attention_mask.packed, attention_mask.window
    query, key, value = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, heads, hd)
    if not query.is_contiguous():
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
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
            # a mask only where some (query, key) pair of the block lies outside the window
            if window is not None and not (
                within_window(k_stop - 1 - q_start, window) and within_window(k_start - (q_stop - 1), window)
            ):
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
    return output[None], None
