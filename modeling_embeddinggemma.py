# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma: a bidirectional Gemma 3 encoder with its sentence-embedding head in one model.

Paper: "EmbeddingGemma: Powerful and Lightweight Text Representations", https://arxiv.org/abs/2509.20354

Data flow (each step names the config fields that drive it):
    input_ids -> scaled embedding (hidden_size**0.5)
      -> N encoder layers: pre/post-normed bidirectional attention (QK-norm, RoPE: rope_theta on full layers,
         rope_local_base_freq on sliding ones, a window of +-sliding_window//2 on sliding layers), pre/post-normed
         gated GELU-tanh MLP
      -> final RMSNorm = last_hidden_state
      -> pooling over non-padding tokens (pooling_mode, "mean") -> Dense layers (dense_out_features, no bias, identity)
      -> L2 normalise (normalize_embeddings) = sentence_embedding; truncate_dim keeps the first d dims, re-normalised.

The layers are written once and run on either batch layout, chosen in one place
(`EmbeddingGemmaTextModel.select_path`) and logged once:
    reference: the padded batch, one mask per layer type, attention through transformers' attention interface
               (eager, sdpa, flex_attention; `set_attn_implementation` switches). Training, per-layer outputs, custom
               positions, and anything traced, exported or compiled run here.
    packed:    inference on the real tokens only, as one row (packed_embeddinggemma.py: the layout and its attention
               function); same values to float32 rounding.
In eager inference (autograd off, not traced) the norms, rotary, MLP and linear layers take in-place and oneDNN forms
(`eager_inference`); otherwise they compute transformers' Gemma 3 formulas.

The weights keep Gemma 3's names (`layers.N.self_attn.q_proj`, ...) so converting a checkpoint is a rename.
The masks are built here, from positions, rather than through the installed transformers' Gemma 3 code, whose
bidirectional window has changed across releases (huggingface/transformers#40700, #47940).
"""

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import _symbolic_trace
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging


try:  # modules of a package (the Hub's remote code, or an installed copy); `save_pretrained` copies each of them
    from .calibration_embeddinggemma import CALIBRATION_TEXTS  # noqa: F401  (transformers 4.x copies direct imports only)
    from .configuration_embeddinggemma import EmbeddingGemmaConfig, within_window
    from .encoding_embeddinggemma import EmbeddingGemmaEncodeMixin
    from .packed_embeddinggemma import PackedAttentionMask, PackedBatch, packed_attention_forward, pool_packed
    from .pipeline_embeddinggemma import SentenceEmbeddingPipeline  # noqa: F401  (`config.custom_pipelines` names it)
    from .precision_embeddinggemma import PRECISIONS, cpu_has_native_bf16, fastest_precision, warn_if_slower
    from .quantization_embeddinggemma import INFERENCE_ONLY, Int8Linear, quantize_int8
except ImportError:  # top-level modules (this repository on sys.path)
    from configuration_embeddinggemma import EmbeddingGemmaConfig, within_window
    from encoding_embeddinggemma import EmbeddingGemmaEncodeMixin
    from packed_embeddinggemma import PackedAttentionMask, PackedBatch, packed_attention_forward, pool_packed
    from precision_embeddinggemma import PRECISIONS, cpu_has_native_bf16, fastest_precision, warn_if_slower
    from quantization_embeddinggemma import INFERENCE_ONLY, Int8Linear, quantize_int8

try:  # transformers >= 5: these skip tensors that were loaded from a checkpoint
    from transformers import initialization as init
except ImportError:
    from torch.nn import init


logger = logging.get_logger(__name__)

# Activations overflow float16 (they reach ~8e5; unslothai/unsloth#4014, huggingface/text-embeddings-inference#748).
FLOAT16_ERROR = (
    "EmbeddingGemma does not support float16: its activations overflow float16 and the embeddings become NaN. "
    "Use dtype=torch.bfloat16 or torch.float32 instead."
)


@dataclass
class EmbeddingGemmaModelOutput(ModelOutput):
    """
    sentence_embedding (`torch.FloatTensor` of shape `(batch_size, dim)`):
        Pooled, projected and (by default) L2-normalised embedding; `dim` is `truncate_dim` when given.
        First field, so `outputs[0]` and the feature-extraction pipeline give the sentence embedding.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Encoder output after the final norm, before pooling. Rows of padding tokens carry no meaning.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
        The embedding output and each layer's output (the last one after the final norm).
    attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
        Attention probabilities of each layer (computed with eager attention).
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
    """Gemma RMSNorm: zero-centred weight used as (1 + w), computed in float32. With `residual`, returns
    `residual + norm(x)`: the post-norms of a layer add their output to the residual stream here.

    In eager inference (`eager_inference`: eval mode, autograd off, not traced) the same values come from one
    reduction and one multiply, and the sum is written into `residual`, in place (as text-embeddings-inference's
    Gemma 3 norm takes the residual in and out); in bfloat16 the norm is computed on a float32 copy and rounded once,
    as below."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.bfloat16) and eager_inference(self):
            return self._in_place(x, residual)
        output = x.float()
        output = output * torch.rsqrt(output.pow(2).mean(-1, keepdim=True) + self.eps)
        # Llama does x.to(float16) * w whilst Gemma is (x * w).to(float16): huggingface/transformers#29402
        output = (output * (1.0 + self.weight.float())).type_as(x)
        return output if residual is None else residual + output

    def _in_place(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        weight = 1.0 + self.weight.float()
        if x.dtype != torch.float32:
            output = x.float()
            inverse_rms = torch.linalg.vector_norm(output, dim=-1, keepdim=True).square_().div_(x.shape[-1])
            output = output.mul_(inverse_rms.add_(self.eps).rsqrt_()).mul_(weight).to(x.dtype)
            return output if residual is None else residual.add_(output)
        inverse_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        output = x * inverse_rms.add_(self.eps).rsqrt_()
        return output.mul_(weight) if residual is None else residual.addcmul_(output, weight)

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
        freqs = position_ids[..., None].float() * inv_freq  # (..., L, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., L, head_dim)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """RoPE on x (..., L, heads, head_dim) with cos/sin (..., L, head_dim). `in_place` (eager inference): in three
    passes instead of five, x * cos, then each half gains -x2 * sin or x1 * sin in place (no rotated copy)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    if not in_place:
        return (x * cos) + (rotate_half(x) * sin)
    half = x.shape[-1] // 2
    sin = sin[..., :half]  # both halves of the table are equal
    output = x * cos
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


def onednn_available() -> bool:
    return (
        hasattr(torch.ops, "mkldnn")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and torch.backends.mkldnn.is_available()
    )


# Weights of a linear layer compared on each call with the ones its oneDNN copy was packed from.
WEIGHT_SAMPLES = 64


class EmbeddingGemmaLinear(nn.Linear):
    """`nn.Linear` whose float32 and bfloat16 products on the CPU in eager inference run on oneDNN, with the weight
    packed once into oneDNN's blocked layout (faster than torch's default product at these shapes; docs/performance.md).
    The packed copy is neither a parameter nor a buffer (never saved, copied or pickled) and is repacked when the
    weight changes (in place or through `load_state_dict`), moves or any optimizer steps; a write through `.data`,
    which no version counter sees, is caught by `WEIGHT_SAMPLES` weights compared on each call (set the weight
    through the parameter itself to be sure of any change). Hooks see the module as any `nn.Linear`; anything else
    (autograd, a trace, another device or dtype) runs `nn.Linear`'s product."""

    onednn = None  # whether this torch can (decided on first use, per process)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._onednn_weight = None
        OptimizerSteps.register()

    def __getstate__(self):
        """deepcopy, pickle and `torch.save(model)`: oneDNN's packed weight is an opaque tensor that cannot be copied;
        the copy packs its own on first use."""
        return {**super().__getstate__(), "_onednn_weight": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        OptimizerSteps.register()  # an unpickled model in a new process counts optimizer steps too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            x.device.type == "cpu"
            and x.dtype == weight.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
            and eager_inference(self)
            and EmbeddingGemmaLinear.onednn is not False
        ):
            return self._onednn_forward(x)
        return super().forward(x)

    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.shape, weight.dtype, OptimizerSteps.count)
        cached = self._onednn_weight
        # Writes through `.data` (PEFT's merge_and_unload adds its deltas so) bump no version counter: a sample of the
        # weight, compared on every call, catches them.
        sample = weight.detach().reshape(-1)[:: max(1, weight.numel() // WEIGHT_SAMPLES)]
        if cached is None or cached[0] != key or not torch.equal(cached[2], sample):
            if EmbeddingGemmaLinear.onednn is None:
                EmbeddingGemmaLinear.onednn = onednn_available()
            try:
                if not EmbeddingGemmaLinear.onednn:
                    raise RuntimeError("no oneDNN products in this torch")
                cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None), sample.clone())
            except RuntimeError:  # a build without them: plain products from now on, in this process
                EmbeddingGemmaLinear.onednn = False
                return super().forward(x)
            self._onednn_weight = cached
        rows = x.reshape(-1, x.shape[-1])
        output = torch.ops.mkldnn._linear_pointwise(rows, cached[1], self.bias, "none", [], "")
        return output.view(*x.shape[:-1], output.shape[-1])


class EmbeddingGemmaMLP(nn.Module):
    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__()
        self.gate_proj = EmbeddingGemmaLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = EmbeddingGemmaLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = EmbeddingGemmaLinear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated, up = self.act_fn(self.gate_proj(x)), self.up_proj(x)
        # in eager inference the product goes into the activation's buffer
        return self.down_proj(activated.mul_(up) if eager_inference(self) else activated * up)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, L, hd) -> (B, n_kv * n_rep, L, hd)"""
    if n_rep == 1:
        return hidden_states
    batch, num_kv_heads, length, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, num_kv_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, num_kv_heads * n_rep, length, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """Plain attention, in transformers' attention-interface signature. `attention_mask` is boolean (B, 1, Lq, Lk),
    True where attending is allowed, or None."""
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


# Implementations that take tanh softcapping of the logits (T5Gemma v1 encoders); sdpa does not.
SOFTCAP_IMPLEMENTATIONS = ("eager", "flex_attention")


def attention_implementation(config: EmbeddingGemmaConfig, output_attentions: bool = False) -> str:
    """The attention implementation a forward uses: the configured one, except that attention probabilities
    (`output_attentions`) and logit softcapping need one that computes them (eager)."""
    implementation = config._attn_implementation or "sdpa"
    if output_attentions and implementation != "eager":
        logger.warning_once(
            f"output_attentions=True: attention runs eagerly, not with {implementation!r}, to return them."
        )
        return "eager"
    if config.attn_logit_softcapping is not None and implementation not in SOFTCAP_IMPLEMENTATIONS:
        logger.warning_once(
            f"attn_logit_softcapping={config.attn_logit_softcapping} is not supported by {implementation!r}; "
            "attention runs eagerly. Load with attn_implementation='eager' (or 'flex_attention') to say so."
        )
        return "eager"
    return implementation


class EmbeddingGemmaAttention(nn.Module):
    """Bidirectional multi-query attention with QK-norm; sliding layers see a local window (the mask says which)."""

    def __init__(self, config: EmbeddingGemmaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.is_causal = False  # read by transformers' attention functions

        heads, kv_heads, bias = config.num_attention_heads, config.num_key_value_heads, config.attention_bias
        self.q_proj = EmbeddingGemmaLinear(config.hidden_size, heads * self.head_dim, bias=bias)
        self.k_proj = EmbeddingGemmaLinear(config.hidden_size, kv_heads * self.head_dim, bias=bias)
        self.v_proj = EmbeddingGemmaLinear(config.hidden_size, kv_heads * self.head_dim, bias=bias)
        self.o_proj = EmbeddingGemmaLinear(heads * self.head_dim, config.hidden_size, bias=bias)
        if config.use_qk_norm:
            self.q_norm = EmbeddingGemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = EmbeddingGemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, implementation="sdpa"):
        """hidden_states (B, L, hidden) on either layout (padded, or packed: B = 1); `implementation` names the
        attention function ("packed" for the packed layout, else transformers' eager, sdpa or flex_attention)."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape)  # (B, L, nh, hd)
        key = self.k_proj(hidden_states).view(hidden_shape)  # (B, L, n_kv, hd)
        value = self.v_proj(hidden_states).view(hidden_shape)  # (B, L, n_kv, hd)
        if self.config.use_qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        in_place = eager_inference(self)
        query, key = (
            apply_rotary(query, *position_embeddings, in_place),
            apply_rotary(key, *position_embeddings, in_place),
        )
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, heads, L, hd)

        if implementation == "packed":
            attention = packed_attention_forward
        elif hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers >= 5
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        elif implementation == "eager":
            attention = eager_attention_forward
        else:  # transformers 4.x, whose set_attn_implementation looks for this lookup in the source
            attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        attn_output, attn_weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            softcap=self.config.attn_logit_softcapping,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights


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

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, implementation="sdpa"):
        """Either layout: (B, L, hidden) -> (B, L, hidden). In eager inference the post-norms add to `hidden_states`
        in place (`EmbeddingGemmaRMSNorm`), so the caller passes a tensor it owns."""
        attention = self.input_layernorm(hidden_states)
        attention, attn_weights = self.self_attn(attention, position_embeddings, attention_mask, implementation)
        hidden_states = self.post_attention_layernorm(attention, residual=hidden_states)

        mlp = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        hidden_states = self.post_feedforward_layernorm(mlp, residual=hidden_states)
        return hidden_states, attn_weights


# ----------------------------------------------------------------------------------------------------------------
# Masks and pooling
# ----------------------------------------------------------------------------------------------------------------


# fx's own test: is_fx_tracing() also answers True under torch.export and warns that it does (torch >= 2.9)
_is_fx_symbolic_tracing = getattr(_symbolic_trace, "is_fx_symbolic_tracing", _symbolic_trace.is_fx_tracing)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def is_traced() -> bool:
    """Whether this forward is being traced, exported or compiled: data-dependent shortcuts (a dropped mask, the
    packed path's per-text loop) would be baked in for every later input, so they must step aside."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    if _is_exporting():
        return True
    return _is_fx_symbolic_tracing() or torch.onnx.is_in_onnx_export()


def eager_inference(module: nn.Module) -> bool:
    """`module` in eval mode, autograd off and nothing traced, exported or compiled: where the layers may work in place
    and on oneDNN's packed weights. Eval mode too, because reentrant gradient checkpointing runs a training forward
    without autograd (transformers 4.x's default), whose inputs must not change. Checked by each norm, linear and
    rotary call, so it is cheap (~0.5 us): torch.onnx's TorchScript export is a jit trace, and its dynamo export an
    export, which the first checks already see."""
    return not (
        module.training
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or _is_exporting()
        or _is_fx_symbolic_tracing()
    )


def bidirectional_attention_mask(
    padding_mask: torch.Tensor, position_ids: torch.Tensor, window: tuple[int, int] | None
) -> torch.Tensor | None:
    """Boolean (B, 1, L, L) mask, True where query i may attend to key j, or None when nothing is masked.

    Keys must be real tokens and, with a `window` (left, right), satisfy -left <= pos_j - pos_i <= right.
    Distances are measured in positions, not indices, so padding anywhere in a row changes nothing for its real
    tokens. Every query may attend to itself, so no row is fully masked: padding queries whose whole window is
    padding would otherwise give NaN in some kernels (huggingface/transformers#45491). The mask is dropped (None)
    only in eager execution: a trace or an export of an unpadded example must still mask padded inputs later.
    """
    batch, length = padding_mask.shape
    if not is_traced() and bool(padding_mask.all()) and (window is None or length <= min(window) + 1):
        return None  # every pair is allowed
    allowed = padding_mask[:, None, :].expand(batch, length, length)  # (B, Lq, Lk): keys must be real
    if window is not None:
        distance = position_ids[:, None, :] - position_ids[:, :, None]  # (B, Lq, Lk): pos_j - pos_i
        allowed = allowed & within_window(distance, window)
    index = torch.arange(length, device=padding_mask.device)
    allowed = allowed | (index[:, None] == index[None, :])  # the diagonal (torch.eye has no bool ONNX kernel)
    return allowed[:, None]  # (B, 1, Lq, Lk)


def flex_attention_mask(padding_mask: torch.Tensor, position_ids: torch.Tensor, window: tuple[int, int] | None):
    """`bidirectional_attention_mask` as a flex_attention BlockMask (same rule, blocks without any allowed pair are
    skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = padding_mask.shape

    def allowed(b, h, q, k):
        visible = padding_mask[b, k]
        if window is not None:
            visible = visible & within_window(position_ids[b, k] - position_ids[b, q], window)
        return visible | (q == k)

    block_mask = create_block_mask(allowed, batch, None, length, length, device=padding_mask.device)
    if padding_mask.device.type == "cpu" and not is_traced():
        # transformers compiles flex_attention with automatic dynamic shapes; on CPU, torch 2.13's inductor then fails
        # to build the kernel once the batch size changes (a C++ compile error). Keep the batch dimension static.
        for tensor in (padding_mask, position_ids, *block_mask.as_tuple()[2:]):
            if isinstance(tensor, torch.Tensor):
                torch._dynamo.mark_static(tensor, 0)
    return block_mask


def attention_masks(implementation, padding_mask, position_ids, windows: dict, packed=None) -> dict:
    """One mask per layer type, in the form the attention implementation takes (the packed layout's: its
    `PackedBatch` and the window)."""
    if implementation == "packed":
        return {layer_type: PackedAttentionMask(packed, window) for layer_type, window in windows.items()}
    build = flex_attention_mask if implementation == "flex_attention" else bidirectional_attention_mask
    return {layer_type: build(padding_mask, position_ids, window) for layer_type, window in windows.items()}


def pool(hidden_states: torch.Tensor, padding_mask, mode: str = "mean") -> torch.Tensor:
    """sentence-transformers' Pooling over real tokens, summed in float32: (B, L, H) -> (B, H); or on the packed
    layout's (1, T, H) when `padding_mask` is its `PackedBatch` (`pool_packed`).

    mean (EmbeddingGemma), mean_sqrt_len_tokens (sum / sqrt(count)), weightedmean (weights 1, 2, ... over the real
    tokens), max, cls (the first real token, <bos> here) and lasttoken (the last real token, <eos> here)."""
    if isinstance(padding_mask, PackedBatch):
        return pool_packed(hidden_states, padding_mask, mode)
    if mode in ("mean", "mean_sqrt_len_tokens", "weightedmean"):
        mask = padding_mask[..., None].to(hidden_states.dtype)  # (B, L, 1)
        counts = padding_mask.sum(dim=1, dtype=torch.float32)[:, None].clamp(min=1e-9)
        if mode == "weightedmean":
            mask = mask.float() * padding_mask.cumsum(dim=1)[..., None].float()
            counts = mask.sum(dim=1).clamp(min=1e-9)
        summed = (hidden_states * mask).sum(dim=1, dtype=torch.float32)
        return (summed / (counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts)).to(hidden_states.dtype)
    if mode == "max":
        return hidden_states.masked_fill(~padding_mask[..., None], float("-inf")).max(dim=1).values
    index = torch.arange(padding_mask.shape[1], device=padding_mask.device).expand_as(padding_mask)
    if mode == "cls":
        token = index.masked_fill(~padding_mask, padding_mask.shape[1] - 1).amin(dim=1)
    elif mode == "lasttoken":
        token = index.masked_fill(~padding_mask, -1).amax(dim=1).clamp(min=0)
    else:
        raise ValueError(f"pooling_mode={mode!r} is not supported.")
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), token]


def truncate_and_normalize(embeddings: torch.Tensor, dim: int | None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka: keep the first `dim` dims, then L2-normalise again, in float32: the embedding comes back float32
    whatever the model's dtype (normalised in bfloat16, norms ran 0.9988-1.0033 and a text's similarity with itself
    reached 1.0066)."""
    if dim is not None:
        embeddings = embeddings[..., :dim]
    embeddings = embeddings.float()
    return F.normalize(embeddings, p=2, dim=-1) if normalize else embeddings


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


LOADING_ROUTES = (
    "To inspect a partial checkpoint, pass output_loading_info=True (returns the model and what was missing); to "
    "train a new head, load a backbone-only checkpoint (the encoder's weights, saved by EmbeddingGemmaTextModel); "
    "otherwise convert the checkpoint with embeddinggemma-convert (it checks every key)."
)


def claims_trained_embeddinggemma(model) -> bool:
    """Whether the checkpoint says it holds a whole trained EmbeddingGemma (encoder and head): its config names
    EmbeddingGemmaModel, or it has sentence-transformers' modules.json (a converted or reference folder)."""
    if "EmbeddingGemmaModel" in (getattr(model.config, "architectures", None) or ()):
        return True
    folder = getattr(model.config, "name_or_path", "") or ""
    return os.path.isfile(os.path.join(folder, "modules.json"))


def check_loaded_weights(model, info: dict, source, opted_in: bool) -> None:
    """transformers' loading contract, never silently random. Weights the checkpoint lacks (or, with
    `ignore_mismatched_sizes=True`, had in another shape) are initialised by `_init_weights`, and then:

    - refused, naming them, for a checkpoint that says it holds a trained EmbeddingGemma, or that lacks encoder
      weights, unless the caller opted in;
    - allowed with a warning naming them when the caller opted in (`output_loading_info=True`, or an explicit
      `state_dict=`), or when the checkpoint is backbone-only (all the encoder, none of the head: training a new head).

    `model.initialized_weights` lists them (empty when the checkpoint had every weight)."""
    prefixes = type(model).unneeded_weights
    missing = sorted(map(str, info.get("missing_keys") or ()))
    mismatched = sorted(
        str(entry[0] if isinstance(entry, tuple) else entry) for entry in info.get("mismatched_keys") or ()
    )
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or () if not str(k).startswith(prefixes))
    model.initialized_weights = sorted({*missing, *mismatched})
    if not (missing or mismatched or unexpected):
        return
    listed = "; ".join(
        f"{what} ({len(keys)}): {keys}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
        if keys
    )
    head = getattr(model, "head_prefixes", ())
    backbone_only = (
        missing
        and not (mismatched or unexpected)
        and all(key.startswith(head) for key in missing)
        and not claims_trained_embeddinggemma(model)
    )
    if not (opted_in or backbone_only):
        raise ValueError(
            f"The weights in {source} do not match {type(model).__name__}: {listed}. Loading would leave those "
            f"weights random and the embeddings meaningless. {LOADING_ROUTES}"
        )
    what = "a backbone-only checkpoint: the head is new" if backbone_only else "loaded as asked"
    message = (
        f"{type(model).__name__} from {source} ({what}): {listed}. The weights "
        f"{model.initialized_weights} are freshly initialised, not trained: the embeddings mean nothing until they "
        "are trained (`model.initialized_weights` lists them)."
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


class EmbeddingGemmaPreTrainedModel(PreTrainedModel):
    config_class = EmbeddingGemmaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EmbeddingGemmaEncoderLayer"]
    # Attention goes through transformers' attention interface with a 4-D boolean mask (a BlockMask for flex).
    # Flash attention takes a 2-D padding mask and a symmetric window instead, and is untested here: not claimed.
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = True  # the reference path has no data-dependent branches under torch.compile
    unneeded_weights: tuple[str, ...] = ()  # prefixes of checkpoint weights that `from_pretrained` may leave unused
    head_prefixes: tuple[str, ...] = ()  # prefixes of the head's weights (see check_loaded_weights)
    initialized_weights: list[str] = []  # weights `from_pretrained` initialised instead of loading

    def _apply(self, fn, *args, **kwargs):
        """`.to(dtype)`, `.bfloat16()`, `.float()`: the config says the dtype the weights now have (saved with them)."""
        module = super()._apply(fn, *args, **kwargs)
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        if dtype is not None and getattr(self.config, "dtype", None) != dtype:
            self.config.dtype = dtype
        return module

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear/Embedding: normal(0, initializer_range)
        if isinstance(module, EmbeddingGemmaRMSNorm):
            init.zeros_(module.weight)  # zero-centred: the norm multiplies by (1 + weight)

    def train(self, mode: bool = True):
        """`nn.Module.train`, refused (before any module changes mode) for a model quantized to int8."""
        if mode and any(isinstance(module, Int8Linear) for module in self.modules()):
            raise RuntimeError(INFERENCE_ONLY)
        return super().train(mode)

    @classmethod
    def from_pretrained(cls, *args, quantize: str | None = None, precision: str | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing float16 and a checkpoint whose weights do not match the model
        (missing, unexpected or mis-shaped: transformers would fill the gaps with random values), with
        `quantize="int8"` to call `quantize_int8()` on the loaded model (CPU inference only; see its docstring), and
        `precision="fastest"` to pick the fastest of float32, bfloat16 and int8 on this machine that keeps min cosine
        >= 0.999 to float32, by a short measurement of the model's products (precision_embeddinggemma.py; the choice
        and its figures are in `model.precision_choice`). `precision="float32" | "bfloat16" | "int8"` asks for one."""
        # Refuse float16 before reading gigabytes of weights; forward() checks again for `.half()` after loading.
        for key in ("dtype", "torch_dtype"):
            if kwargs.get(key) in (torch.float16, "float16"):
                raise ValueError(FLOAT16_ERROR)
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r} is not supported; expected None or 'int8'.")
        if precision is not None:
            if precision not in ("fastest", *PRECISIONS):
                raise ValueError(
                    f"precision={precision!r} is not supported; expected one of {('fastest', *PRECISIONS)}."
                )
            asked = [f"{key}={kwargs[key]!r}" for key in ("dtype", "torch_dtype") if kwargs.get(key) is not None]
            if quantize is not None:
                asked.append(f"quantize={quantize!r}")
            if asked:
                raise ValueError(
                    f"precision={precision!r} and {', '.join(asked)} both choose the precision; pass one of them."
                )
            kwargs["dtype"] = torch.float32  # measured and converted after loading
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        wants_info = kwargs.pop("output_loading_info", False)
        opted_in = wants_info or kwargs.get("state_dict") is not None  # the caller inspects or supplies the weights
        if source is not None and not isinstance(kwargs.get("config"), PretrainedConfig):
            folder = local_snapshot(source, kwargs)
            if folder is not None:
                check_folder_before_building(cls, folder, subfolder=kwargs.get("subfolder") or "", partial=opted_in)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        check_finite_weights(model, source)
        check_loaded_weights(model, info, source, opted_in)
        if quantize == "int8":
            quantize_int8(model)
        if precision is not None:
            model.set_precision(precision)
        return (model, info) if wants_info else model

    def set_precision(self, precision: str = "fastest"):
        """Converts this float32 model in place to `precision` ("float32", "bfloat16", "int8", or "fastest": the
        fastest on this machine that keeps min cosine >= 0.999, measured) and returns it; `self.precision_choice`
        says what was chosen and, for "fastest", the probe's figures (GFLOP/s per mode and token count)."""
        if precision not in ("fastest", *PRECISIONS):
            raise ValueError(f"precision={precision!r} is not supported; expected one of {('fastest', *PRECISIONS)}.")
        figures = None
        if precision == "fastest":
            device = next(self.parameters()).device
            if device.type == "cuda":
                precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
            elif device.type != "cpu":
                precision = "float32"
            else:
                precision, figures = fastest_precision(self.config)
            logger.info(f"precision='fastest' chose {precision} on this machine (products in GFLOP/s: {figures}).")
        if precision == "float32":
            self.to(torch.float32)
        elif precision == "bfloat16":
            self.to(torch.bfloat16)
        elif precision == "int8":
            quantize_int8(self)
        self.precision_choice = {"precision": precision, "figures": figures}
        return self

    def quantize(self, mode: str = "int8", **options):
        """Quantizes this model in place for CPU inference and returns it: `mode="int8"` with the options of
        `quantize_int8` (`calibration_texts`, `skip`, `rotation`, `rounding`, `smoothing`, `tokenizer`)."""
        if mode != "int8":
            raise ValueError(f"quantize mode {mode!r} is not supported; expected 'int8'.")
        return quantize_int8(self, **options)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if any(isinstance(module, Int8Linear) for module in self.modules()):
            raise ValueError(
                "This model was quantized to int8 in memory and its int8 weights cannot be saved; save the float "
                "model and quantize after loading (`from_pretrained(..., quantize='int8')`)."
            )
        super().save_pretrained(save_directory, *args, **kwargs)


class EmbeddingGemmaTextModel(EmbeddingGemmaPreTrainedModel):
    """The encoder alone: token ids -> `last_hidden_state`. Loads from a full EmbeddingGemma folder too (the head's
    `dense.*` weights are then not needed)."""

    unneeded_weights = ("dense.",)  # the head's, when loading the encoder from a full folder

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
        output, layout = self.run_encoder(
            input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states, output_attentions
        )
        if isinstance(layout, PackedBatch):
            output.last_hidden_state = layout.unpack(output.last_hidden_state)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def select_path(self, position_ids=None, output_hidden_states=False, output_attentions=False) -> str:
        """Returns "packed" or "reference": the one place where a forward's batch layout is chosen (logged once per
        reason).

        The packed layout (packed_embeddinggemma.py: the real tokens only, with its own attention function) runs in
        inference with SDPA attention, default positions and no per-layer outputs, unless `config.use_packed_path`
        is False. Everything else, and anything traced, exported or compiled (the packed layout's shapes depend on
        the data), takes the reference path: the padded batch and transformers' attention interface."""
        if is_traced():
            return "reference"  # no logging either: it would break a compiled graph
        implementation = self.config._attn_implementation or "sdpa"
        reasons = {
            "config.use_packed_path is False": not getattr(self.config, "use_packed_path", True),
            "training mode": self.training,
            f"attn_implementation={implementation!r} (the packed path is SDPA's)": implementation != "sdpa",
            "attention logit softcapping": self.config.attn_logit_softcapping is not None,
            "position_ids given": position_ids is not None,
            "per-layer outputs asked for": bool(output_hidden_states or output_attentions),
        }
        reason = next((why for why, applies in reasons.items() if applies), None)
        if reason is None:
            logger.info_once("EmbeddingGemma runs the packed path (real tokens only, attention per text).")
            return "packed"
        logger.info_once(f"EmbeddingGemma runs the reference path: {reason}.")
        return "reference"

    def run_encoder(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        output_attentions=None,
    ) -> tuple[BaseModelOutput, "torch.Tensor | PackedBatch"]:
        """The encoder on a padded batch, on the path `select_path` picks: (output, layout). On the reference path the
        layout is the 2-D boolean padding mask; on the packed path it is the `PackedBatch` and `last_hidden_state` is
        the packed (1, T, hidden) (`pool` takes either; `PackedBatch.unpack` pads it)."""
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        batch, length = _input_shape(input_ids, inputs_embeds)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        padding_mask = _padding_mask(attention_mask, batch, length, device)
        if torch.float16 in (self.embed_tokens.weight.dtype, getattr(inputs_embeds, "dtype", None)):
            raise ValueError(FLOAT16_ERROR)
        if self.embed_tokens.weight.dtype == torch.bfloat16 and device.type == "cpu" and not is_traced():
            if not cpu_has_native_bf16():
                logger.warning_once(
                    "bfloat16 on a CPU without native bfloat16 products (no AVX512_BF16 or AMX): they are emulated "
                    "and run several times slower than float32. Load with dtype=torch.float32 (the default) on this "
                    "CPU."
                )
            elif not self.training:
                warn_if_slower("bfloat16", self.config)  # native, but measured: some CPUs decode bf16 no faster
        if not is_traced() and length > self.config.max_position_embeddings:
            logger.warning_once(
                f"Inputs of {length} tokens are longer than the model's {self.config.max_position_embeddings} "
                "positions; the model was not trained on them and quality drops. Truncate them (the tokenizer's "
                "truncation=True, or `encode`, which does)."
            )

        packed = None
        if self.select_path(position_ids, output_hidden_states, output_attentions) == "packed":
            # The packed layout: the real tokens as one row, (1, T); only attention differs (its own function).
            packed = PackedBatch.from_padding_mask(padding_mask)
            implementation = "packed"
            if input_ids is not None:
                input_ids = packed.pack(input_ids)
            else:
                inputs_embeds = packed.pack(inputs_embeds)
            position_ids = packed.positions[None]
        else:
            implementation = attention_implementation(self.config, output_attentions)
            if position_ids is None:
                # Real tokens are numbered 0, 1, 2, ... whatever padding sits between them.
                position_ids = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)
            elif position_ids.shape != padding_mask.shape:
                position_ids = position_ids.expand(batch, length)
        if inputs_embeds is None:
            hidden_states = self.embed_tokens(input_ids)
        else:  # a copy when the layers work in place: the caller's tensor stays as it was
            hidden_states = inputs_embeds.clone() if eager_inference(self) else inputs_embeds

        # Masks and rotary tables are built once per forward and layer type.
        windows = {
            t: self.config.attention_window if t == "sliding_attention" else None for t in set(self.config.layer_types)
        }
        masks = attention_masks(implementation, padding_mask, position_ids, windows, packed)
        position_embeddings = {t: self.rotary_emb(hidden_states, position_ids, t) for t in windows}

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:  # a copy when the next layer adds to it in place
                all_hidden_states += (hidden_states.clone() if eager_inference(self) else hidden_states,)
            hidden_states, attn_weights = layer(
                hidden_states,
                position_embeddings=position_embeddings[layer.attention_type],
                attention_mask=masks[layer.attention_type],
                implementation=implementation,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.norm(hidden_states)
        if packed is not None:
            return BaseModelOutput(last_hidden_state=hidden_states), packed
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        output = BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )
        return output, padding_mask


# A safetensors header is a JSON table of names, dtypes, shapes and offsets: ~100 bytes a tensor. Anything larger than
# this is not a checkpoint of this model family, and reading it whole would be the memory exhaustion it may aim at.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_safetensors_header(path: str) -> dict:
    """The tensor table of one safetensors file, {name: {"dtype", "shape", "data_offsets"}}, read without the data and
    checked against the file: a header larger than the file or than `MAX_SAFETENSORS_HEADER`, or a tensor whose bytes
    lie beyond the end of the file or do not match its shape, is an error naming the file."""
    import json
    import struct

    size = os.path.getsize(path)
    damaged = f"{path} is not a valid safetensors file"
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{damaged}: it has {size} bytes, fewer than the 8 of a header length.")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ValueError(
                f"{damaged}: its header claims {length:,} bytes but the file has {size:,} (and a header is at most "
                f"{MAX_SAFETENSORS_HEADER:,}). The file is truncated or was not written as safetensors; download or "
                "convert it again."
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise ValueError(f"{damaged}: its header is not JSON ({error}). Download or convert it again.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{damaged}: its header is not a table of tensors.")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            expected = count * _DTYPE_BYTES.get(entry["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{damaged}: the entry of {name!r} has no dtype, shape and data offsets.") from None
        if not 0 <= start <= end <= data_size or (expected and end - start != expected):
            raise ValueError(
                f"{damaged}: tensor {name!r} of shape {entry['shape']} claims bytes {start:,}-{end:,} but the file "
                f"holds {data_size:,} bytes of data. The file is truncated or damaged; download or convert it again."
            )
    header.pop("__metadata__", None)
    return header


def checkpoint_shapes(folder: str) -> dict[str, list[int]] | None:
    """{weight name: shape} of the safetensors checkpoint in `folder` (one file or shards), or None without one."""
    import json

    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        outside = [shard for shard in shards if os.path.basename(shard) != shard]
        if outside:
            raise ValueError(
                f"{index} names shards outside its folder ({outside[:3]}); a checkpoint's shards sit beside it."
            )
        files = [os.path.join(folder, shard) for shard in shards]
    else:
        return None
    shapes = {}
    for path in files:
        shapes.update({name: entry["shape"] for name, entry in read_safetensors_header(path).items()})
    return shapes


def local_snapshot(source, kwargs: dict) -> str | None:
    """The local folder behind `source`: the folder itself, or for a Hub id the cache snapshot holding its config and
    safetensors, fetched as `from_pretrained` would fetch them anyway (same cache, same revision and token), so that
    the sizes can be checked before anything is built. None when they cannot be had here: `from_pretrained` then
    reports why."""
    if os.path.isdir(source):
        return str(source)
    try:
        from transformers.utils import cached_file

        options = {
            key: kwargs[key]
            for key in ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
            if kwargs.get(key) is not None
        }
        config = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False, **options)
        if config is None:
            return None
        weights = cached_file(source, "model.safetensors", _raise_exceptions_for_missing_entries=False, **options)
        if weights is None:
            index = cached_file(
                source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **options
            )
            if index is None:
                return None
            import json

            with open(index, encoding="utf-8") as handle:
                shards = sorted(set((json.load(handle).get("weight_map") or {}).values()))
            for shard in shards:
                if os.path.basename(shard) == shard:
                    cached_file(source, shard, **options)
    except Exception:  # no network, no access, a gated repo: from_pretrained says so in its own words
        return None
    folder = os.path.dirname(config)
    return os.path.dirname(folder) if kwargs.get("subfolder") else folder


def check_folder_before_building(cls, folder: str, subfolder: str = "", partial: bool = False) -> None:
    """Before a model is built from a local folder (untrusted input: a folder from the Hub): the config's fields are
    valid (`check_fields`) and its sizes match the checkpoint's own tensors, so that a config claiming a million
    layers or a huge vocabulary is refused in milliseconds instead of allocating the model it describes. With
    `partial` (the caller opted in to missing weights), fewer layers than the config's (within its bounds) are
    missing weights, reported by the loading info, not an error."""
    folder = os.path.join(folder, subfolder) if subfolder else folder
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return  # transformers says what is missing
    config = cls.config_class.from_pretrained(folder)
    shapes = checkpoint_shapes(folder)
    if shapes is None:
        return  # no safetensors here: transformers reports it (and never unpickles: use_safetensors is not ours)
    layers = {
        int(name.split(".")[i + 1])
        for name in shapes
        for i, part in enumerate(name.split(".")[:-1])
        if part == "layers" and name.split(".")[i + 1].isdigit()
    }
    found = max(layers) + 1 if layers else 0
    expected = {}
    if found > config.num_hidden_layers or not partial:
        expected["num_hidden_layers"] = (config.num_hidden_layers, found, "layers in the checkpoint")
    # (config field, its value, the weight that holds it, the weight's axis)
    sizes = [
        ("vocab_size", config.vocab_size, "embed_tokens.weight", 0),
        ("hidden_size", config.hidden_size, "embed_tokens.weight", 1),
        ("intermediate_size", config.intermediate_size, "layers.0.mlp.gate_proj.weight", 0),
        ("num_attention_heads * head_dim", config.num_attention_heads * config.head_dim,
         "layers.0.self_attn.q_proj.weight", 0),
    ]  # fmt: skip
    for field, claimed, weight, axis in sizes:
        shape = next((shape for name, shape in shapes.items() if name.endswith(weight)), None)
        if shape is not None and len(shape) == 2:
            expected[field] = (claimed, shape[axis], f"{('rows', 'columns')[axis]} of {weight}")
    wrong = [
        f"{field}={claimed} but the checkpoint has {actual} {what}"
        for field, (claimed, actual, what) in expected.items()
        if claimed != actual
    ]
    if wrong:
        raise ValueError(
            f"{folder}/config.json does not describe its checkpoint: " + "; ".join(wrong) + ". The config was edited "
            "or belongs to another model; fix config.json (or convert the checkpoint again with "
            "embeddinggemma-convert)."
        )


def check_finite_weights(model: nn.Module, source) -> None:
    """A loaded checkpoint with NaN or infinite weights is refused by name: it would give NaN embeddings, or plausible
    numbers where a norm hides them."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all())
    ]  # meta tensors (offloaded weights) hold no values to check
    if bad:
        raise ValueError(
            f"The weights in {source} contain NaN or infinite values in {len(bad)} tensors ({bad[:5]}); the checkpoint "
            "is damaged (or was saved after a diverged training run). Download or convert it again, or load an "
            "earlier checkpoint."
        )


def _return_dict(config, return_dict: bool | None) -> bool:
    return return_dict if return_dict is not None else getattr(config, "return_dict", True)


def _input_shape(input_ids, inputs_embeds) -> tuple[int, int]:
    """(batch, length) of the inputs, with a clear error for a missing, doubled, misshapen or empty batch."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None:
        name, inputs, expected = "input_ids", input_ids, "(batch, length)"
    else:
        name, inputs, expected = "inputs_embeds", inputs_embeds, "(batch, length, hidden_size)"
    if inputs.dim() != expected.count(",") + 1:
        raise ValueError(f"{name} has shape {tuple(inputs.shape)}; expected {expected}.")
    if not is_traced() and 0 in inputs.shape[:2]:
        raise ValueError(
            f"Got an empty batch of shape {tuple(inputs.shape[:2])}; pass at least one text of at least one token."
        )
    return tuple(inputs.shape[:2])


def _padding_mask(attention_mask, batch, length, device) -> torch.Tensor:
    """2-D boolean mask of real tokens, with a clear error for masks of the wrong shape."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected the 2-D padding mask "
            f"{(batch, length)} that the tokenizer returns (1 = real token, 0 = padding)."
        )
    mask = attention_mask.to(device=device, dtype=torch.bool)
    if not is_traced() and not bool(mask.any(dim=-1).all()):
        empty = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(
            f"attention_mask rows {empty[:10]} have no real token: an all-padding row has no embedding (pooling it "
            "would give a zero vector). Every text needs at least one token (the tokenizer adds <bos> and <eos>); "
            "drop the empty rows from the batch."
        )
    return mask


class EmbeddingGemmaModel(EmbeddingGemmaEncodeMixin, EmbeddingGemmaPreTrainedModel):
    """Encoder + head: pooling -> Dense layers -> L2 normalise, returning `sentence_embedding`
    (and `last_hidden_state`). The Dense layers keep the order and shapes of the reference's `2_Dense`/`3_Dense`.
    `encode`, `encode_query` and `encode_document` come from `EmbeddingGemmaEncodeMixin`."""

    head_prefixes = ("dense.",)  # a checkpoint without them is backbone-only: the head is trained anew

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
        if truncate_dim is None:
            return None
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int):
            raise TypeError(
                f"truncate_dim={truncate_dim!r} must be an int, one of this model's Matryoshka dims "
                f"{self.config.matryoshka_dims}."
            )
        if truncate_dim == self.config.embedding_dim:
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
        encoder_output, layout = self.model.run_encoder(
            input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states, output_attentions
        )
        embeddings = pool(encoder_output.last_hidden_state, layout, self.config.pooling_mode)
        if isinstance(layout, PackedBatch):  # pooled from the packed tokens; padded for the output
            encoder_output.last_hidden_state = layout.unpack(encoder_output.last_hidden_state)
        for dense in self.dense:
            embeddings = self.dense_act(dense(embeddings))  # (B, dense_out_features[i])
        embeddings = truncate_and_normalize(embeddings, truncate_dim, self.config.normalize_embeddings)
        output = EmbeddingGemmaModelOutput(
            sentence_embedding=embeddings,
            last_hidden_state=encoder_output.last_hidden_state,
            hidden_states=encoder_output.hidden_states,
            attentions=encoder_output.attentions,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the model's tokenizer and the files that let
        `SentenceTransformer(folder, trust_remote_code=True)` use this model's own head (sentence-transformers >= 5.5).
        A model without a tokenizer saves without one, with a warning: `encode` and sentence-transformers need it."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_sentence_transformers_config(save_directory, self.config)
        if not kwargs.get("is_main_process", True):
            return
        if getattr(self, "_hf_peft_config_loaded", False):
            # transformers saves only the adapter of a model with PEFT adapters: the config beside it lets
            # AutoTokenizer / AutoProcessor and SentenceTransformer read the folder (the adapter names its base)
            self.config.save_pretrained(save_directory)
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)
        else:
            logger.warning(
                f"Saved {save_directory} without a tokenizer: this model has none. `encode` and "
                "SentenceTransformer need one; set `model.tokenizer = AutoTokenizer.from_pretrained(...)` and save "
                "again, or save the tokenizer into the same folder."
            )


def write_sentence_transformers_config(folder, config: EmbeddingGemmaConfig) -> None:
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


EmbeddingGemmaConfig.register_for_auto_class()
EmbeddingGemmaModel.register_for_auto_class("AutoModel")

__all__ = [
    "EmbeddingGemmaModelOutput",
    "EmbeddingGemmaPreTrainedModel",
    "EmbeddingGemmaTextModel",
    "EmbeddingGemmaModel",
    "bidirectional_attention_mask",
    "pool",
    "truncate_and_normalize",
    "quantize_int8",
    "Int8Linear",
]
