# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma: a bidirectional Gemma 3 encoder with its sentence-embedding head in one model.

Paper: "EmbeddingGemma: Powerful and Lightweight Text Representations", https://arxiv.org/abs/2509.20354

Data flow (each step names the config fields that drive it):
    input_ids -> scaled embedding (hidden_size**0.5)
      -> N encoder layers: pre/post-normed bidirectional attention (QK-norm, RoPE: rope_theta on full layers,
         rope_local_base_freq on sliding ones, a window of +-sliding_window//2 on sliding layers), pre/post-normed
         gated GELU-tanh MLP
      -> final RMSNorm = last_hidden_state
      -> mean pool over non-padding tokens (pooling_mode) -> Dense layers (dense_out_features, no bias, identity)
      -> L2 normalise (normalize_embeddings) = sentence_embedding; truncate_dim keeps the first d dims, re-normalised.

The weights keep Gemma 3's names (`layers.N.self_attn.q_proj`, ...) so converting a checkpoint is a rename.
The masks are built here, index-based, rather than through the installed transformers' Gemma 3 code, whose
bidirectional window has changed across releases (huggingface/transformers#40700, #47940).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput, logging


try:  # a module of a package (the Hub's remote code, or an installed copy)
    from .configuration_embeddinggemma import EmbeddingGemmaConfig
except ImportError:  # a top-level module (this repository on sys.path)
    from configuration_embeddinggemma import EmbeddingGemmaConfig

try:  # imported so that `save_pretrained` copies it beside the model: `config.custom_pipelines` names it
    from .pipeline_embeddinggemma import SentenceEmbeddingPipeline  # noqa: F401
except ImportError:
    pass

try:  # transformers >= 5: these skip tensors that were loaded from a checkpoint
    from transformers import initialization as init
except ImportError:
    from torch.nn import init


logger = logging.get_logger(__name__)

# Activations overflow float16 (they reach ~8e5; unslothai/unsloth#4014, huggingface/text-embeddings-inference#748).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
FLOAT16_ERROR = (
    "EmbeddingGemma does not support float16: its activations overflow float16 and the embeddings become NaN. "
    "Use dtype=torch.bfloat16 or torch.float32 instead."
)


@dataclass
class EmbeddingGemmaModelOutput(ModelOutput):
    """
    sentence_embedding (`torch.FloatTensor` of shape `(batch_size, dim)`):
        Mean-pooled, projected and (by default) L2-normalised embedding; `dim` is `truncate_dim` when given.
        First field, so `outputs[0]` and the feature-extraction pipeline give the sentence embedding.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Encoder output after the final norm, before pooling. Rows of padding tokens carry no meaning.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
        The embedding output and each layer's output (the last one after the final norm).
    attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`, eager attention only):
        Attention probabilities of each layer.
    """

    sentence_embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class EmbeddingGemmaScaledWordEmbedding(nn.Embedding):
    """Token embedding multiplied by sqrt(hidden_size), rounded to the weight dtype first as Gemma 3 does
    (in bfloat16 sqrt(768) = 27.71 becomes 27.75; see huggingface/transformers#29402)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.embed_scale, dtype=self.weight.dtype, device=self.weight.device)
        return super().forward(input_ids) * scale


class EmbeddingGemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: zero-centred weight used as (1 + w), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = x.float()
        output = output * torch.rsqrt(output.pow(2).mean(-1, keepdim=True) + self.eps)
        # Llama does x.to(float16) * w whilst Gemma is (x * w).to(float16): huggingface/transformers#29402
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)

    def fast(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` (plus `residual` when given) in fewer passes over memory, for float32 inference: one reduction
        for the norm, one multiply, and the weight applied while adding the residual. Other dtypes, and autograd,
        take `forward`."""
        if x.dtype != torch.float32 or torch.is_grad_enabled():  # in-place updates would break autograd
            output = self(x)
            return output if residual is None else residual + output
        inverse_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        output = x * inverse_rms.add_(self.eps).rsqrt_()
        weight = 1.0 + self.weight
        if residual is None:
            return output.mul_(weight)
        return residual.addcmul_(output, weight)  # the residual stream is updated in place

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class EmbeddingGemmaRotaryEmbedding(nn.Module):
    """RoPE with one base per layer type. The inverse frequencies are computed on the fly (a few hundred values)
    instead of living in buffers, so meta-device loading never leaves them uninitialised."""

    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__()
        self.head_dim = config.head_dim
        # (base, linear factor) per layer type; linear scaling divides the frequencies, as transformers does.
        self.rope = {
            "full_attention": (config.rope_theta, config.rope_linear_factor),
            "sliding_attention": (config.rope_local_base_freq, 1.0),
        }

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
        base, factor = self.rope[layer_type]
        dim = self.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=x.device) / dim)) / factor
        freqs = position_ids[..., None].float() * inv_freq  # (B, L, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, head_dim)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, head_dim): broadcast over heads
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def apply_rotary_pos_emb_packed(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_pos_emb` for packed x (T, heads, head_dim) with cos/sin (T, head_dim), in three passes
    instead of five: x * cos, then each half gains -x2 * sin or x1 * sin in place (no rotated copy, no negation)."""
    half = x.shape[-1] // 2
    sin = sin[:, None, :half]  # both halves of the table are equal
    output = x * cos[:, None]
    output[..., :half].addcmul_(x[..., half:], sin, value=-1.0)
    output[..., half:].addcmul_(x[..., :half], sin)
    return output


# The fast path's float32 CPU products go through oneDNN with weights packed once into its blocked layout: 15-25%
# faster than torch's default GEMM for these shapes on an AVX2 CPU (benchmarks/bench_inference.py). Same values up to
# float32 rounding.
_ONEDNN_LINEAR = hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fast_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for 2-D packed x, on oneDNN with a cached packed weight when possible (float32, CPU, inference)."""
    if not (_ONEDNN_LINEAR and type(module) is nn.Linear and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.dim() == 2 and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()):  # fmt: skip
        return module(x)
    weight = module.weight
    key = (weight.data_ptr(), weight._version, weight.shape)
    cached = getattr(module, "_onednn_weight", None)
    if cached is None or cached[0] != key:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        except RuntimeError:  # a build without it: plain products from now on
            globals()["_ONEDNN_LINEAR"] = False
            return module(x)
        cached = (key, packed)
        object.__setattr__(module, "_onednn_weight", cached)  # not a parameter or buffer: never saved
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], module.bias, "none", [], "")


class EmbeddingGemmaMLP(nn.Module):
    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project_gate_up(x)
        return self.down_proj(self.act_fn(gate) * up)

    def fast(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` with the product written into the activation's buffer (one pass and one allocation fewer)."""
        if torch.is_grad_enabled():
            return self(x)
        gate, up = self.project_gate_up(x, fast_linear)
        return fast_linear(self.down_proj, self.act_fn(gate).mul_(up))

    def project_gate_up(self, x: torch.Tensor, linear=lambda module, x: module(x)):
        if hasattr(self, "gate_up_proj"):  # int8: one product for both (see `quantize_int8`)
            return self.gate_up_proj(x).chunk(2, dim=-1)
        return linear(self.gate_proj, x), linear(self.up_proj, x)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, L, hd) -> (B, n_kv * n_rep, L, hd)"""
    if n_rep == 1:
        return hidden_states
    batch, num_kv_heads, length, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, num_kv_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, num_kv_heads * n_rep, length, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None):
    """Plain attention. `attention_mask` is boolean (B, 1, Lq, Lk), True where attending is allowed, or None."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, Lq, Lk)
    if softcap is not None:
        attn_weights = torch.tanh(attn_weights / softcap) * softcap
    if attention_mask is not None:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # (B, nh, Lq, hd)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None):
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return attn_output.transpose(1, 2).contiguous(), None


ATTENTION_FUNCTIONS = {"eager": eager_attention_forward, "sdpa": sdpa_attention_forward}


class EmbeddingGemmaAttention(nn.Module):
    """Bidirectional multi-query attention with QK-norm; sliding layers see a local window (the mask says which)."""

    def __init__(self, config: EmbeddingGemmaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.attn_logit_softcapping = config.attn_logit_softcapping
        self.is_causal = False

        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        if config.use_qk_norm:
            self.q_norm = EmbeddingGemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = EmbeddingGemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, output_attentions=False):
        batch, length, _ = hidden_states.shape
        hidden_shape = (batch, length, -1, self.head_dim)
        query, key, value = self.project_qkv(hidden_states)
        query = query.view(hidden_shape).transpose(1, 2)  # (B, nh, L, hd)
        key = key.view(hidden_shape).transpose(1, 2)  # (B, n_kv, L, hd)
        value = value.view(hidden_shape).transpose(1, 2)  # (B, n_kv, L, hd)
        if self.config.use_qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)

        implementation = self.config._attn_implementation or "sdpa"
        # SDPA has no softcapping and returns no probabilities: those need the eager path.
        if output_attentions or self.attn_logit_softcapping is not None:
            implementation = "eager"
        attention = ATTENTION_FUNCTIONS.get(implementation)
        if attention is None:
            raise ValueError(
                f"attn_implementation={implementation!r} is not supported by EmbeddingGemma; "
                f"expected one of {sorted(ATTENTION_FUNCTIONS)}."
            )
        attn_output, attn_weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            softcap=self.attn_logit_softcapping,
        )
        attn_output = self.o_proj(attn_output.reshape(batch, length, -1))
        return attn_output, attn_weights

    def project_qkv(self, hidden_states, linear=lambda module, x: module(x)):
        if hasattr(self, "qkv_proj"):  # int8: one product for the three (see `quantize_int8`)
            return self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
        return linear(self.q_proj, hidden_states), linear(self.k_proj, hidden_states), linear(self.v_proj, hidden_states)

    def packed_forward(self, hidden_states, position_embeddings, packed: "PackedBatch", window):
        """`forward` on packed tokens (T, hidden): the projections see only real tokens, attention runs per
        sequence (see `packed_attention`)."""
        tokens = hidden_states.shape[0]
        query, key, value = self.project_qkv(hidden_states, fast_linear)
        query = query.view(tokens, -1, self.head_dim)  # (T, nh, hd)
        key = key.view(tokens, -1, self.head_dim)  # (T, n_kv, hd)
        value = value.view(tokens, -1, self.head_dim)  # (T, n_kv, hd)
        if self.config.use_qk_norm:
            query, key = self.q_norm.fast(query), self.k_norm.fast(key)
        query = apply_rotary_pos_emb_packed(query, *position_embeddings)  # tables (T, hd)
        key = apply_rotary_pos_emb_packed(key, *position_embeddings)
        attn_output = packed_attention(query, key, value, packed, window, self.scaling)
        return fast_linear(self.o_proj, attn_output.view(tokens, -1))


class EmbeddingGemmaEncoderLayer(GradientCheckpointingLayer):
    """A Gemma 3 block, named an *encoder* layer because attention is bidirectional."""

    def __init__(self, config: EmbeddingGemmaConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.layer_types[layer_idx]
        self.self_attn = EmbeddingGemmaAttention(config, layer_idx)
        self.mlp = EmbeddingGemmaMLP(config)
        self.input_layernorm = EmbeddingGemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = EmbeddingGemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.pre_feedforward_layernorm = EmbeddingGemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_feedforward_layernorm = EmbeddingGemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, output_attentions=False):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, attn_weights = self.self_attn(
            hidden_states, position_embeddings, attention_mask, output_attentions=output_attentions
        )
        hidden_states = residual + self.post_attention_layernorm(hidden_states)

        residual = hidden_states
        hidden_states = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        hidden_states = residual + self.post_feedforward_layernorm(hidden_states)
        return hidden_states, attn_weights

    def packed_forward(self, hidden_states, position_embeddings, packed: "PackedBatch", window):
        """`forward` on packed tokens (T, hidden), with each post-norm applied while adding the residual."""
        attn_output = self.self_attn.packed_forward(
            self.input_layernorm.fast(hidden_states), position_embeddings, packed, window
        )
        hidden_states = self.post_attention_layernorm.fast(attn_output, residual=hidden_states)
        mlp_output = self.mlp.fast(self.pre_feedforward_layernorm.fast(hidden_states))
        return self.post_feedforward_layernorm.fast(mlp_output, residual=hidden_states)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling() if hasattr(torch, "compiler") else False


def bidirectional_attention_mask(
    padding_mask: torch.Tensor, position_ids: torch.Tensor, window: tuple[int, int] | None
) -> torch.Tensor | None:
    """Boolean (B, 1, L, L) mask, True where query i may attend to key j, or None when nothing is masked.

    Keys must be real tokens and, with a `window` (left, right), satisfy -left <= pos_j - pos_i <= right.
    Distances are measured in positions, not indices, so padding anywhere in a row changes nothing for its real
    tokens. Every query may attend to itself, so no row is fully masked: padding queries whose whole window is
    padding would otherwise give NaN in some kernels (huggingface/transformers#45491).
    """
    batch, length = padding_mask.shape
    if not _is_compiling():  # data-dependent shortcuts would break a torch.compile graph
        all_real = bool(padding_mask.all())
        if window is None and all_real:
            return None
        if window is not None and all_real and length <= min(window) + 1:
            return None  # every pair is inside the window
    allowed = padding_mask[:, None, :].expand(batch, length, length)  # (B, Lq, Lk): keys must be real
    if window is not None:
        left, right = window
        distance = position_ids[:, None, :] - position_ids[:, :, None]  # (B, Lq, Lk): pos_j - pos_i
        allowed = allowed & (distance >= -left) & (distance <= right)
    index = torch.arange(length, device=padding_mask.device)
    allowed = allowed | (index[:, None] == index[None, :])  # the diagonal (torch.eye has no bool ONNX kernel)
    return allowed[:, None]  # (B, 1, Lq, Lk)


def mean_pool(hidden_states: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, accumulated in float32 as sentence-transformers' Pooling does; (B, L, H) -> (B, H)."""
    mask = padding_mask[..., None].to(hidden_states.dtype)  # (B, L, 1)
    summed = (hidden_states * mask).sum(dim=1, dtype=torch.float32)
    counts = padding_mask.sum(dim=1, dtype=torch.float32)[:, None].clamp(min=1e-9)
    return (summed / counts).to(hidden_states.dtype)


def truncate_and_normalize(embeddings: torch.Tensor, dim: int | None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka: keep the first `dim` dims, then L2-normalise again."""
    if dim is not None:
        embeddings = embeddings[..., :dim]
    return F.normalize(embeddings, p=2, dim=-1) if normalize else embeddings


# ----------------------------------------------------------------------------------------------------------------
# Fast path: only the real tokens of a batch, laid end to end ("packed"), and attention per sequence
# ----------------------------------------------------------------------------------------------------------------

# Query rows per block when a sliding layer attends only to the band of keys its window keeps.
BAND_BLOCK = 128


@dataclass
class PackedBatch:
    """Where the real tokens of a padded (B, L) batch are once packed into (T, ...)."""

    batch: int
    length: int
    index: torch.Tensor | None  # (T,) flat positions of the real tokens in B * L; None when nothing is padding
    sequence_ids: torch.Tensor  # (T,) the row of each token
    positions: torch.Tensor  # (T,) 0, 1, 2, ... within each row
    lengths: torch.Tensor  # (B,) real tokens per row
    groups: list[tuple[int, int, int]]  # (first token, rows, tokens per row) for runs of rows of equal length
    masks: dict  # window masks by geometry, built on first use and shared by all layers of a forward

    @classmethod
    def from_padding_mask(cls, padding_mask: torch.Tensor) -> "PackedBatch":
        batch, length = padding_mask.shape
        device = padding_mask.device
        lengths = padding_mask.sum(-1)
        sizes = lengths.tolist()
        index = None if all(size == length for size in sizes) else padding_mask.reshape(-1).nonzero().squeeze(-1)
        sequence_ids = torch.repeat_interleave(torch.arange(batch, device=device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths  # first token of each row
        positions = torch.arange(int(sum(sizes)), device=device) - starts[sequence_ids]
        groups, start = [], 0
        for size in sizes:
            if size and groups and groups[-1][2] == size:
                first, rows, _ = groups[-1]
                groups[-1] = (first, rows + 1, size)
            elif size:
                groups.append((start, 1, size))
            start += size
        return cls(batch, length, index, sequence_ids, positions, lengths, groups, {})

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
            self.masks[geometry] = torch.zeros(outside.shape, dtype=dtype, device=device).masked_fill_(outside, float("-inf"))
        return self.masks[geometry]


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
        if window is None or length <= BAND_BLOCK + window[0] + window[1]:
            blocks = [(0, length, 0, length)]  # the band is (nearly) everything: one call, masked if need be
        else:
            blocks = [
                (first, min(first + BAND_BLOCK, length), max(0, first - window[0]),
                 min(length, first + BAND_BLOCK + window[1]))
                for first in range(0, length, BAND_BLOCK)
            ]  # fmt: skip
        for q_start, q_stop, k_start, k_stop in blocks:
            mask = None
            if window is not None and not (q_stop - 1 - k_start <= window[0] and k_stop - 1 - q_start <= window[1]):
                mask = packed.window_mask((q_start, q_stop), (k_start, k_stop), group, window, query.dtype, query.device)
            attended = F.scaled_dot_product_attention(
                q[:, :, q_start * group : q_stop * group],
                k[:, :, k_start:k_stop],
                v[:, :, k_start:k_stop],
                attn_mask=mask,
                scale=scaling,
            )  # (rows, n_kv, (q_stop - q_start) * group, hd)
            out[:, q_start:q_stop] = attended.view(rows, kv_heads, q_stop - q_start, group, head_dim).transpose(1, 2)
    return output


def packed_mean_pool(hidden_states: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """`mean_pool` on packed tokens: (T, H) -> (B, H), summed in float32."""
    summed = hidden_states.new_zeros(packed.batch, hidden_states.shape[-1], dtype=torch.float32)
    summed.index_add_(0, packed.sequence_ids, hidden_states.float())
    counts = packed.lengths.to(torch.float32)[:, None].clamp(min=1e-9)
    return (summed / counts).to(hidden_states.dtype)


# ----------------------------------------------------------------------------------------------------------------
# int8 on CPU: per-output-channel int8 weights, per-token int8 activations
# ----------------------------------------------------------------------------------------------------------------

# Layers left in float32 by default: the inputs of `down_proj` carry outliers of 40-100x their RMS, so they lose the
# most to int8 (see docs/performance.md for the measured trade-off of each choice).
INT8_SKIP_DEFAULT = ("mlp.down_proj",)


class Int8Linear(nn.Module):
    """A bias-optional `nn.Linear` replacement computing x @ W^T with int8 weights (symmetric, one scale per output
    channel) and int8 activations quantized per token, on the fbgemm/x86 int8 kernels of torch's CPU build.

    Per-token activation scales come from a rescaling: each row of x is divided by its max |x| before the kernel's
    dynamic per-tensor quantization (so every row spans the same range and gets its own effective scale), and the
    output rows are multiplied back. Weights use 7 bits (|q| <= 63) so that AVX2's u8 x s8 pair sums cannot saturate
    (2 * 255 * 63 < 2**15) while activations keep all 8 bits.
    """

    WEIGHT_LEVELS = 63

    def __init__(self, *linears: nn.Linear):
        """One int8 product for `linears` that read the same input, their outputs concatenated (q/k/v, gate/up)."""
        super().__init__()
        import warnings

        self.in_features = linears[0].in_features
        self.out_features = sum(linear.out_features for linear in linears)
        weight = torch.cat([linear.weight.detach().float().cpu() for linear in linears])
        scale = (weight.abs().amax(dim=1) / self.WEIGHT_LEVELS).clamp(min=1e-12)
        biases = [linear.bias for linear in linears]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach().float().cpu() if b is not None else torch.zeros(linear.out_features)
                              for b, linear in zip(biases, linears)])  # fmt: skip
        with warnings.catch_warnings():  # torch marks quantized tensors as deprecated; the kernels remain
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(
                weight, scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8
            )
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        row_max = torch.linalg.vector_norm(rows, ord=float("inf"), dim=-1, keepdim=True).clamp_(min=1e-12)
        output = torch.ops.quantized.linear_dynamic(rows / row_max, self._packed, False)
        return output.mul_(row_max).reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (per-channel W, per-token x)"


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = INT8_SKIP_DEFAULT) -> nn.Module:
    """Replaces the encoder's linear layers by `Int8Linear`, in place, and returns the model (eval mode, CPU).

    `skip` names layers to keep in float32 by suffix ("mlp.down_proj", "self_attn.o_proj", ...); () quantizes all.
    The Dense head stays in float32 (it runs once per text). For CPU inference: torch's int8 kernels are CPU-only,
    the result cannot be saved (quantize again after loading) nor trained. Check its agreement with the float model
    on your own texts (`benchmarks/bench_inference.py` reports min/mean cosine and STS-B for each choice).
    """
    import torch.backends.quantized

    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm")):
        raise RuntimeError(f"int8 needs torch's x86/fbgemm quantized engine; this build has {engines}.")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize_int8 is for CPU inference; move the model to the CPU first (`model.to('cpu')`).")
    if "x86" in engines:
        torch.backends.quantized.engine = "x86"

    def skipped(name):
        return any(name.endswith(suffix) for suffix in skip)

    encoder = model.model if isinstance(model, EmbeddingGemmaModel) else model
    for layer in encoder.layers:
        attention, mlp = layer.self_attn, layer.mlp
        # Projections that read the same input share one product (and one quantization of that input).
        fused = [
            (attention, "self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
            (attention, "self_attn", "o_proj", ("o_proj",)),
            (mlp, "mlp", "gate_up_proj", ("gate_proj", "up_proj")),
            (mlp, "mlp", "down_proj", ("down_proj",)),
        ]
        for module, prefix, fused_name, names in fused:
            if any(skipped(f"{prefix}.{n}") for n in names):
                continue
            linears = [getattr(module, n) for n in names]
            if not all(isinstance(linear, nn.Linear) for linear in linears):
                continue  # already quantized
            for n in names:
                delattr(module, n)
            setattr(module, fused_name, Int8Linear(*linears))
            if fused_name == "qkv_proj":
                module.qkv_sizes = [linear.out_features for linear in linears]
    return model.eval()


class EmbeddingGemmaPreTrainedModel(PreTrainedModel):
    config_class = EmbeddingGemmaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EmbeddingGemmaEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear/Embedding: normal(0, initializer_range)
        if isinstance(module, EmbeddingGemmaRMSNorm):
            init.zeros_(module.weight)  # zero-centred: the norm multiplies by (1 + weight)

    @classmethod
    def from_pretrained(cls, *args, quantize: str | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing float16, with `quantize="int8"` to call `quantize_int8()` on
        the loaded model (CPU inference only; see its docstring)."""
        # Refuse float16 before reading gigabytes of weights; forward() checks again for `.half()` after loading.
        for key in ("dtype", "torch_dtype"):
            if kwargs.get(key) in (torch.float16, "float16"):
                raise ValueError(FLOAT16_ERROR)
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r} is not supported; expected None or 'int8'.")
        model = super().from_pretrained(*args, **kwargs)
        if quantize == "int8":
            quantize_int8(model)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        if any(isinstance(module, Int8Linear) for module in self.modules()):
            raise ValueError(
                "This model was quantized to int8 in memory and its int8 weights cannot be saved; save the float "
                "model and quantize after loading (`from_pretrained(..., quantize='int8')`)."
            )
        super().save_pretrained(save_directory, *args, **kwargs)


class EmbeddingGemmaTextModel(EmbeddingGemmaPreTrainedModel):
    """The encoder alone: token ids -> `last_hidden_state`."""

    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__(config)
        self.embed_tokens = EmbeddingGemmaScaledWordEmbedding(
            config.vocab_size, config.hidden_size, config.pad_token_id, embed_scale=config.hidden_size**0.5
        )
        self.layers = nn.ModuleList(
            [EmbeddingGemmaEncoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = EmbeddingGemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = EmbeddingGemmaRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        if self.uses_fast_path(position_ids, output_hidden_states, output_attentions):
            hidden_states, packed = self.packed_forward(input_ids, attention_mask, inputs_embeds)
            output = BaseModelOutput(last_hidden_state=packed.unpack(hidden_states))
            return output if return_dict is not False else output.to_tuple()

        batch, length = self._input_shape(input_ids, inputs_embeds)
        inputs_embeds = self._embed(input_ids, inputs_embeds)
        padding_mask = _padding_mask(attention_mask, batch, length, inputs_embeds.device)
        if position_ids is None:
            # Real tokens are numbered 0, 1, 2, ... whatever padding sits between them.
            position_ids = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)
        elif position_ids.shape != padding_mask.shape:
            position_ids = position_ids.expand(batch, length)

        # Masks and rotary tables are built once per forward and layer type, on the embeddings' device.
        layer_types = set(self.config.layer_types)
        windows = {"full_attention": None, "sliding_attention": self.config.attention_window}
        masks = {t: bidirectional_attention_mask(padding_mask, position_ids, windows[t]) for t in layer_types}
        position_embeddings = {t: self.rotary_emb(inputs_embeds, position_ids, t) for t in layer_types}

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = layer(
                hidden_states,
                position_embeddings=position_embeddings[layer.attention_type],
                attention_mask=masks[layer.attention_type],
                output_attentions=bool(output_attentions),
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )
        return output if return_dict is not False else output.to_tuple()

    @staticmethod
    def _input_shape(input_ids, inputs_embeds) -> tuple[int, int]:
        """(batch, length) of the inputs, with a clear error for a missing, doubled, misshapen or empty batch."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        name, inputs, expected = (
            ("input_ids", input_ids, "(batch, length)") if input_ids is not None
            else ("inputs_embeds", inputs_embeds, "(batch, length, hidden_size)")
        )  # fmt: skip
        if inputs.dim() != expected.count(",") + 1:
            raise ValueError(f"{name} has shape {tuple(inputs.shape)}; expected {expected}.")
        if 0 in inputs.shape[:2]:
            raise ValueError(
                f"Got an empty batch of shape {tuple(inputs.shape[:2])}; pass at least one text of at least one token."
            )
        return tuple(inputs.shape[:2])

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        """The scaled token embeddings of `input_ids`, or `inputs_embeds`; float16 is refused."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if inputs_embeds.dtype == torch.float16:
            raise ValueError(FLOAT16_ERROR)
        return inputs_embeds

    def uses_fast_path(self, position_ids=None, output_hidden_states=None, output_attentions=None) -> bool:
        """Whether `forward` takes the packed fast path (`config.use_fast_path`): in inference, with SDPA, default
        positions, no softcapping and no per-layer outputs. Otherwise the reference path runs."""
        return bool(
            getattr(self.config, "use_fast_path", True)
            and not self.training
            and position_ids is None
            and not output_hidden_states
            and not output_attentions
            and self.config.attn_logit_softcapping is None
            and (self.config._attn_implementation or "sdpa") == "sdpa"
        )

    def packed_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        """The encoder on the real tokens only: returns the final hidden states packed, (T, hidden), and the
        `PackedBatch` that says where they sit in the padded batch (`packed.unpack(...)` gives (B, L, hidden))."""
        batch, length = self._input_shape(input_ids, inputs_embeds)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        packed = PackedBatch.from_padding_mask(_padding_mask(attention_mask, batch, length, device))
        if input_ids is not None:  # embed only the real tokens
            hidden_states = self._embed(packed.pack(input_ids), None)
        else:  # a copy: the residual stream is updated in place
            hidden_states = self._embed(None, packed.pack(inputs_embeds).clone())
        windows = {"full_attention": None, "sliding_attention": self.config.attention_window}
        position_embeddings = {t: self.rotary_emb(hidden_states, packed.positions, t) for t in set(self.config.layer_types)}
        for layer in self.layers:
            hidden_states = layer.packed_forward(
                hidden_states, position_embeddings[layer.attention_type], packed, windows[layer.attention_type]
            )
        return self.norm.fast(hidden_states), packed


def _padding_mask(attention_mask, batch, length, device) -> torch.Tensor:
    """2-D boolean mask of real tokens, with a clear error for masks of the wrong shape."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected the 2-D padding mask "
            f"{(batch, length)} that the tokenizer returns (1 = real token, 0 = padding)."
        )
    return attention_mask.to(device=device, dtype=torch.bool)


class EmbeddingGemmaModel(EmbeddingGemmaPreTrainedModel):
    """Encoder + head: mean pool -> Dense layers -> L2 normalise, returning `sentence_embedding`
    (and `last_hidden_state`). The Dense layers keep the order and shapes of the reference's `2_Dense`/`3_Dense`."""

    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__(config)
        self.model = EmbeddingGemmaTextModel(config)
        in_features = [config.hidden_size] + config.dense_out_features[:-1]
        self.dense = nn.ModuleList(
            [nn.Linear(i, o, bias=config.dense_bias) for i, o in zip(in_features, config.dense_out_features)]
        )
        self.dense_act = nn.Identity() if config.dense_activation == "identity" else ACT2FN[config.dense_activation]
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def check_truncate_dim(self, truncate_dim: int | None) -> int | None:
        """Returns `truncate_dim` if it is one of the Matryoshka dims (None: the full embedding), else raises."""
        if truncate_dim is None or truncate_dim == self.config.embedding_dim:
            return None
        if truncate_dim not in self.config.matryoshka_dims:
            raise ValueError(
                f"truncate_dim={truncate_dim!r} is not one of this model's Matryoshka dims "
                f"{self.config.matryoshka_dims}; the embedding was trained to be truncated only to those."
            )
        return truncate_dim

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        token_type_ids: torch.Tensor | None = None,  # some tokenizers return it; Gemma has one segment
    ) -> EmbeddingGemmaModelOutput:
        truncate_dim = self.check_truncate_dim(truncate_dim)
        if self.model.uses_fast_path(position_ids, output_hidden_states, output_attentions):
            hidden_states, packed = self.model.packed_forward(input_ids, attention_mask, inputs_embeds)
            embeddings = self._head(packed_mean_pool(hidden_states, packed), truncate_dim)
            output = EmbeddingGemmaModelOutput(sentence_embedding=embeddings, last_hidden_state=packed.unpack(hidden_states))
            return output if return_dict is not False else output.to_tuple()

        encoder_outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        last_hidden_state = encoder_outputs.last_hidden_state
        batch, length = last_hidden_state.shape[:2]
        padding_mask = _padding_mask(attention_mask, batch, length, last_hidden_state.device)

        embeddings = self._head(mean_pool(last_hidden_state, padding_mask), truncate_dim)

        output = EmbeddingGemmaModelOutput(
            sentence_embedding=embeddings,
            last_hidden_state=last_hidden_state,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()

    def _head(self, pooled: torch.Tensor, truncate_dim: int | None) -> torch.Tensor:
        """Dense layers, then Matryoshka truncation and L2 normalisation: (B, hidden) -> (B, dim)."""
        embeddings = pooled
        for dense in self.dense:
            embeddings = self.dense_act(dense(embeddings))  # (B, dense_out_features[i])
        return truncate_and_normalize(embeddings, truncate_dim, self.config.normalize_embeddings)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the files that let `SentenceTransformer(folder,
        trust_remote_code=True)` use this model's own head (sentence-transformers >= 5.5)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_sentence_transformers_files(save_directory, self.config)

    # ------------------------------------------------------------------------------------------------------------
    # encode: texts in, embeddings out (the sentence-transformers habits)
    # ------------------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer of the folder or Hub repo this model was loaded from (loaded on first use), or the one set
        with `model.tokenizer = ...`."""
        if getattr(self, "_tokenizer", None) is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "This model was not loaded from a folder or Hub repo, so it has no tokenizer to load; set one "
                    "with `model.tokenizer = AutoTokenizer.from_pretrained(...)`."
                )
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        self._tokenizer = tokenizer

    def encode(
        self,
        texts: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
        max_batch_tokens: int | None = None,
    ):
        """Embeds `texts` with the prompt `prompt` or the one named `prompt_name` (see `config.prompts`).

        A string gives one vector `[dim]`, a list a matrix `[len(texts), dim]` in input order (numpy float32 by
        default, else a tensor in the model's dtype). Texts are sorted by token length and batched by a token
        budget: a batch holds at most `max_batch_tokens` tokens (default `DEFAULT_MAX_BATCH_TOKENS`, 4,096, counted
        as rows x longest) and, when `batch_size` is given, at most `batch_size` texts; a text longer than the budget
        goes alone. Texts longer than the model's maximum length are truncated, with a warning. `truncate_dim` is
        one of `config.matryoshka_dims`.
        """
        return self._encode(texts, lambda count: [self.config.prompt_for(prompt_name, prompt)] * count,
                            batch_size, truncate_dim, convert_to_numpy, show_progress_bar, device,
                            max_batch_tokens)  # fmt: skip

    def encode_query(self, texts: str | list[str], **kwargs):
        """`encode` with the "query" prompt (`task: search result | query: `) unless `prompt`/`prompt_name` is given."""
        kwargs.setdefault("prompt_name", "query")
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: str | list[str], titles: str | list[str | None] | None = None, **kwargs):
        """`encode` with the document prompt: `title: {title} | text: ` when `titles` are given (one per text,
        None for none), `title: none | text: ` otherwise."""
        if titles is None:
            kwargs.setdefault("prompt_name", "document")
            return self.encode(texts, **kwargs)
        if kwargs.get("prompt") is not None or kwargs.get("prompt_name") is not None:
            raise ValueError("Pass either titles or prompt/prompt_name to encode_document, not both.")
        titles = [titles] if isinstance(titles, str) else list(titles)
        count = 1 if isinstance(texts, str) else len(texts)
        if len(titles) != count:
            raise ValueError(f"Got {len(titles)} titles for {count} texts; pass one title (or None) per text.")
        prompts = [self.config.document_prompt(title) for title in titles]
        positional = ("batch_size", "truncate_dim", "convert_to_numpy", "show_progress_bar", "device", "max_batch_tokens")
        unknown = set(kwargs) - set(positional)
        if unknown:
            raise TypeError(f"encode_document() got unexpected keyword arguments {sorted(unknown)}.")
        return self._encode(texts, lambda _: prompts, **kwargs)

    @torch.no_grad()
    def _encode(self, texts, prompts_for, batch_size=None, truncate_dim=None, convert_to_numpy=True,
                show_progress_bar=None, device=None, max_batch_tokens=None):  # fmt: skip
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode takes a string or a list of strings; items (index, type) {bad[:5]} are not strings.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive int (or None: as many as the token budget holds).")
        if max_batch_tokens is None:
            max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens={max_batch_tokens!r} must be a positive int.")
        truncate_dim = self.check_truncate_dim(truncate_dim)
        dim = truncate_dim or self.config.embedding_dim
        if device is not None:
            self.to(device)
        prompts = prompts_for(len(texts))
        if not texts:
            empty = torch.empty(0, dim, dtype=self.dtype)
            return empty.float().numpy() if convert_to_numpy else empty

        input_ids = self._tokenize([p + t for p, t in zip(prompts, texts)])
        order = sorted(range(len(texts)), key=lambda i: -len(input_ids[i]))  # longest first: OOM shows at once
        batches = token_length_batches([len(input_ids[i]) for i in order], batch_size, max_batch_tokens)
        if show_progress_bar is None:
            show_progress_bar = len(batches) >= PROGRESS_BAR_MIN_BATCHES
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        output = torch.empty(len(texts), dim, dtype=self.dtype, device=self.device)
        start = 0
        for size in tqdm(batches, desc="Batches", disable=not show_progress_bar):
            rows = order[start : start + size]
            start += size
            batch_ids, attention_mask = pad_right([input_ids[i] for i in rows], self.config.pad_token_id or 0)
            embeddings = self(
                input_ids=batch_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                truncate_dim=truncate_dim,
            ).sentence_embedding
            output[torch.tensor(rows, device=self.device)] = embeddings
        self.train(was_training)
        if single:
            output = output[0]
        return output.float().cpu().numpy() if convert_to_numpy else output

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text with <bos>/<eos>, truncated to the model's maximum length (with a warning)."""
        tokenizer = self.tokenizer
        max_length = self.config.max_position_embeddings
        if tokenizer.model_max_length and tokenizer.model_max_length < max_length:
            max_length = tokenizer.model_max_length
        input_ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        too_long = [i for i, ids in enumerate(input_ids) if len(ids) > max_length]
        if too_long and not getattr(self, "_warned_truncation", False):
            self._warned_truncation = True  # once per model: corpus jobs call encode many times
            logger.warning(
                f"{len(too_long)} text(s) are longer than the model's {max_length} tokens and were truncated "
                f"(first: index {too_long[0]}, {len(input_ids[too_long[0]])} tokens); later truncations are not "
                "reported. Split long documents into chunks to embed all of them."
            )
        if too_long:
            truncated = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length)["input_ids"]
            for i, ids in zip(too_long, truncated):
                input_ids[i] = ids
        return input_ids


PROGRESS_BAR_MIN_BATCHES = 8
# Tokens per `encode` batch by default: large enough that the matrix multiplies run at the CPU's full rate (on a
# 2-core AVX2 machine: 76 GFLOP/s at 320 rows, 87 at 1,024, 94 at 4,096), small enough to bound memory.
DEFAULT_MAX_BATCH_TOKENS = 4096


def write_sentence_transformers_files(folder, config: EmbeddingGemmaConfig) -> None:
    """modules.json, sentence_bert_config.json and config_sentence_transformers.json for a one-module
    SentenceTransformer whose Transformer reads this model's `sentence_embedding` output."""
    import json
    import os

    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        ],
        "sentence_bert_config.json": {
            "max_seq_length": config.max_position_embeddings,
            "do_lower_case": False,
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "sentence_embedding"}},
            "module_output_name": "sentence_embedding",
        },
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": config.prompts,
            "default_prompt_name": config.default_prompt_name,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")


def token_length_batches(lengths: list[int], batch_size: int | None, max_batch_tokens: int | None = None) -> list[int]:
    """Sizes of consecutive batches over texts sorted by decreasing token length: at most `batch_size` texts (None:
    no limit), and at most `max_batch_tokens` padded tokens (the first text's length times the count) unless a text
    alone exceeds it."""
    sizes, start = [], 0
    while start < len(lengths):
        size = len(lengths) - start if batch_size is None else min(batch_size, len(lengths) - start)
        if max_batch_tokens is not None:
            size = max(1, min(size, max_batch_tokens // max(lengths[start], 1)))
        sizes.append(size)
        start += size
    return sizes


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), real tokens first."""
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


EmbeddingGemmaConfig.register_for_auto_class()
EmbeddingGemmaModel.register_for_auto_class("AutoModel")

__all__ = [
    "EmbeddingGemmaModelOutput",
    "EmbeddingGemmaPreTrainedModel",
    "EmbeddingGemmaTextModel",
    "EmbeddingGemmaModel",
    "bidirectional_attention_mask",
    "mean_pool",
    "truncate_and_normalize",
    "quantize_int8",
    "Int8Linear",
]
