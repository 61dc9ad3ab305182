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


class EmbeddingGemmaMLP(nn.Module):
    def __init__(self, config: EmbeddingGemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


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
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, nh, L, hd)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, n_kv, L, hd)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, n_kv, L, hd)
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
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=padding_mask.device)
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
    def from_pretrained(cls, *args, **kwargs):
        # Refuse float16 before reading gigabytes of weights; forward() checks again for `.half()` after loading.
        for key in ("dtype", "torch_dtype"):
            if kwargs.get(key) in (torch.float16, "float16"):
                raise ValueError(FLOAT16_ERROR)
        return super().from_pretrained(*args, **kwargs)


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
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if inputs_embeds.dtype == torch.float16:
            raise ValueError(FLOAT16_ERROR)
        batch, length = inputs_embeds.shape[:2]
        if batch == 0 or length == 0:
            raise ValueError(
                f"Got an empty batch of shape {tuple(inputs_embeds.shape[:2])}; pass at least one text of at least "
                "one token."
            )
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

        embeddings = mean_pool(last_hidden_state, padding_mask)  # (B, hidden)
        for dense in self.dense:
            embeddings = self.dense_act(dense(embeddings))  # (B, dense_out_features[i])
        embeddings = truncate_and_normalize(embeddings, truncate_dim, self.config.normalize_embeddings)

        output = EmbeddingGemmaModelOutput(
            sentence_embedding=embeddings,
            last_hidden_state=last_hidden_state,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


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
        batch_size: int = 32,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
        max_batch_tokens: int | None = None,
    ):
        """Embeds `texts` with the prompt `prompt` or the one named `prompt_name` (see `config.prompts`).

        A string gives one vector `[dim]`, a list a matrix `[len(texts), dim]` in input order (numpy float32 by
        default, else a tensor in the model's dtype). Texts are sorted by token length and batched so that padding
        is minimal; `max_batch_tokens` also caps the padded tokens of a batch. Texts longer than the model's
        maximum length are truncated, with a warning. `truncate_dim` is one of `config.matryoshka_dims`.
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
    def _encode(self, texts, prompts_for, batch_size=32, truncate_dim=None, convert_to_numpy=True,
                show_progress_bar=None, device=None, max_batch_tokens=None):  # fmt: skip
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode takes a string or a list of strings; items (index, type) {bad[:5]} are not strings.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
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


def token_length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int | None = None) -> list[int]:
    """Sizes of consecutive batches over texts sorted by decreasing token length: at most `batch_size` texts, and at
    most `max_batch_tokens` padded tokens (the first text's length times the count) unless a text alone exceeds it."""
    sizes, start = [], 0
    while start < len(lengths):
        size = min(batch_size, len(lengths) - start)
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
]
