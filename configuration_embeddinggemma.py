# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma configuration: a bidirectional Gemma 3 encoder plus its sentence-embedding head.

One config holds everything the reference spreads over `config.json`, `1_Pooling/`, `2_Dense/`, `3_Dense/` and
`config_sentence_transformers.json` of google/embeddinggemma-300m, so that a single folder describes the model.
"""

from transformers import PretrainedConfig


# The 14 prompts of google/embeddinggemma-300m's `config_sentence_transformers.json`, in its order.
EMBEDDINGGEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}

# How a document with a title is written (the model card: "title: {title | 'none'} | text: {content}").
DOCUMENT_TITLE_TEMPLATE = "title: {title} | text: "

# `pipeline(task, model=folder, trust_remote_code=True)` reads these; both tasks return sentence embeddings.
CUSTOM_PIPELINES = {
    task: {"impl": "pipeline_embeddinggemma.SentenceEmbeddingPipeline", "pt": ["AutoModel"], "tf": [], "type": "text"}
    for task in ("sentence-embeddings", "feature-extraction")
}

LAYER_TYPES = ("sliding_attention", "full_attention")
# Sanity bounds on an untrusted config, checked before anything is built (the real model has 24 layers and 2,048
# positions; Gemma 3 27B has 62 layers and 131,072 positions). Sizes are also checked against the checkpoint's tensors.
MAX_LAYERS = 1024
MAX_POSITIONS = 1 << 20
# sentence-transformers' Pooling modes that need no extra weights (EmbeddingGemma uses "mean"), each with the name
# of its `pooling_mode_*` flag in a Pooling module's config.json: the one table of pooling names.
POOLING_FLAGS = {
    "mean": "mean_tokens",
    "max": "max_tokens",
    "cls": "cls_token",
    "lasttoken": "lasttoken",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "weightedmean": "weightedmean_tokens",
}
POOLING_MODES = tuple(POOLING_FLAGS)

# `config.json`'s model_type. When transformers' own Gemma 3 reads the encoder exactly (the EmbeddingGemma window,
# QK-norm, no softcapping, no RoPE scaling), the folder says "gemma3_text" with `use_bidirectional_attention: true`,
# as google/embeddinggemma-300m does: `AutoTokenizer` and every tool that knows Gemma 3 (TEI, vLLM, llama.cpp's
# converter) then read it without our code and without a trust_remote_code prompt, while `auto_map` gives
# `AutoModel.from_pretrained(..., trust_remote_code=True)` this package's model. Other encoders (T5Gemma windows,
# softcapping, no QK-norm, scaled RoPE) would be read wrongly by Gemma 3's code, so they say "embeddinggemma",
# which only our code reads.
MODEL_TYPE = "embeddinggemma"
NATIVE_MODEL_TYPE = "gemma3_text"
MODEL_TYPES = (MODEL_TYPE, NATIVE_MODEL_TYPE)

# How the declared `sliding_window` W becomes the keys a query i may see, as inclusive (left, right) distances.
#   embeddinggemma: transformers' Gemma 3 with use_bidirectional_attention keeps |i - j| < W // 2 + 1,
#                   i.e. [i - W//2, i + W//2]: 512 -> +-256.
#   t5gemma2:       T5Gemma 2's encoder keeps i - j < (W + 1) // 2 and j - i < W // 2 + 1,
#                   i.e. [i - 255, i + 256] for W = 512: one token narrower on the left.
#   t5gemma:        T5Gemma (v1)'s encoder keeps |i - j| <= W on eager/SDPA.
SLIDING_WINDOW_CONVENTIONS = ("embeddinggemma", "t5gemma2", "t5gemma")


def within_window(distance, window: tuple[int, int]):
    """The window rule, written once: key j is visible from query i iff `-left <= j - i <= right` for the (left,
    right) of `EmbeddingGemmaConfig.attention_window`. `distance` is j - i: an int, or a tensor of them (every mask of
    the model is built from this: boolean, flex_attention's and the packed layout's; layers without a window build
    no window mask)."""
    return (distance >= -window[0]) & (distance <= window[1])


def is_embeddinggemma_config(config: dict) -> bool:
    """Whether a config.json was written by this package (EmbeddingGemmaModel.save_pretrained or this converter),
    whatever model_type it declares (see configuration_embeddinggemma.MODEL_TYPE)."""
    auto_model = (config.get("auto_map") or {}).get("AutoModel", "")
    return (
        config.get("model_type") == "embeddinggemma"
        or "EmbeddingGemmaModel" in (config.get("architectures") or [])
        or auto_model.endswith("EmbeddingGemmaModel")
    )


class EmbeddingGemmaConfig(PretrainedConfig):
    r"""
    Configuration of [`EmbeddingGemmaModel`]. The defaults are google/embeddinggemma-300m.

    Encoder (a Gemma 3 text model with bidirectional attention):
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        head_dim, hidden_activation, max_position_embeddings, rms_norm_eps, attention_bias, attention_dropout,
        initializer_range, pad/bos/eos_token_id: as in `Gemma3TextConfig`.
        query_pre_attn_scalar (`float`): attention scores are scaled by `query_pre_attn_scalar**-0.5`.
        layer_types (`list[str]`): "sliding_attention" or "full_attention" per layer. Defaults to 5 sliding : 1 full
            (`sliding_window_pattern=6`).
        sliding_window (`int`): the window as the checkpoint declares it (512). Stored verbatim, never rewritten;
            the model derives the attention radius from it with `sliding_window_convention`.
        sliding_window_convention (`str`): one of `SLIDING_WINDOW_CONVENTIONS`; see `attention_window`.
        rope_theta (`float`): RoPE base of the full-attention layers (1e6).
        rope_local_base_freq (`float`): RoPE base of the sliding-attention layers (1e4).
        rope_linear_factor (`float`): linear RoPE scaling of the full-attention layers (1.0 = none; larger Gemma 3
            models and T5Gemma 2 use 8.0).
        use_qk_norm (`bool`): RMSNorm on queries and keys (Gemma 3). T5Gemma v1 encoders (Gemma 2 blocks) have none.
        attn_logit_softcapping (`float`, *optional*): tanh softcapping of attention logits (T5Gemma v1: 50.0).

    Head (sentence-transformers Pooling -> Dense -> Dense -> Normalize):
        pooling_mode (`str`): how token states become one vector, over real tokens, the prompt included: "mean"
            (EmbeddingGemma), or one of sentence-transformers' other weight-free modes in `POOLING_MODES`.
        dense_out_features (`list[int]`): output size of each Dense layer, applied in order ([3072, 768]).
        dense_bias (`bool`): whether the Dense layers have a bias (False).
        dense_activation (`str`): activation after each Dense layer, "identity" or a transformers activation name.
        normalize_embeddings (`bool`): L2-normalise the sentence embedding (True).
        matryoshka_dims (`list[int]`): the dims the model was trained to be truncated to ([768, 512, 256, 128]).
        prompts (`dict[str, str]`): task prompts by name, prepended to the text (the reference's 14).
        default_prompt_name (`str`, *optional*): prompt used when none is asked for (None: no prompt).
        document_title_template (`str`): how a document prompt with a title is written.

    Inference:
        use_packed_path (`bool`): in inference (eval mode, SDPA attention, default positions, no per-layer outputs,
            not under trace, export or compile), run only the real tokens of a batch ("packed"), attention per
            sequence, and on long inputs only the band of keys the sliding window keeps. Same result as the reference
            path to float32 rounding (tested to 1e-5); False forces the reference path (padded batch, transformers'
            attention interface). See docs/architecture.md. Folders written before it was renamed say
            `use_fast_path`, which is read as this.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size=262_144,
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=24,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        layer_types=None,
        sliding_window_pattern=6,
        sliding_window=512,
        sliding_window_convention="embeddinggemma",
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_linear_factor=1.0,
        use_qk_norm=True,
        attn_logit_softcapping=None,
        attention_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        pooling_mode="mean",
        dense_out_features=(3072, 768),
        dense_bias=False,
        dense_activation="identity",
        normalize_embeddings=True,
        matryoshka_dims=(768, 512, 256, 128),
        prompts=None,
        default_prompt_name=None,
        document_title_template=DOCUMENT_TITLE_TEMPLATE,
        use_packed_path=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.hidden_activation = hidden_activation
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        if layer_types is None:
            layer_types = [
                "full_attention" if (i + 1) % sliding_window_pattern == 0 else "sliding_attention"
                for i in range(num_hidden_layers)
            ]
        self.layer_types = list(layer_types)
        self.sliding_window = sliding_window
        self.sliding_window_convention = sliding_window_convention
        self.rope_theta = rope_theta
        self.rope_local_base_freq = rope_local_base_freq
        self.rope_linear_factor = rope_linear_factor
        self.use_qk_norm = use_qk_norm
        self.attn_logit_softcapping = attn_logit_softcapping
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range

        self.pooling_mode = pooling_mode
        self.dense_out_features = list(dense_out_features)
        self.dense_bias = dense_bias
        self.dense_activation = dense_activation
        self.normalize_embeddings = normalize_embeddings
        self.matryoshka_dims = list(matryoshka_dims)
        self.prompts = dict(EMBEDDINGGEMMA_PROMPTS if prompts is None else prompts)
        self.default_prompt_name = default_prompt_name
        self.document_title_template = document_title_template
        self.use_packed_path = kwargs.pop("use_fast_path", use_packed_path)  # its name until 2026-12

        kwargs.setdefault("custom_pipelines", CUSTOM_PIPELINES)
        kwargs.pop("use_bidirectional_attention", None)  # written for Gemma 3's reader; always true here
        self.check_fields()  # before transformers' own validators, whose messages are less specific
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """transformers' reader, taking both model types this class writes (see `MODEL_TYPE`) as its own, so that
        loading a "gemma3_text" folder with this class does not warn about a type mismatch."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in MODEL_TYPES:
            config_dict["model_type"] = cls.model_type
        return config_dict, kwargs

    @property
    def gemma3_reads_exactly(self) -> bool:
        """Whether transformers' Gemma3TextModel(use_bidirectional_attention=True) computes this encoder exactly."""
        return (
            self.sliding_window_convention == "embeddinggemma"
            and self.use_qk_norm
            and self.attn_logit_softcapping is None
            and self.rope_linear_factor == 1.0
        )

    def to_dict(self) -> dict:
        output = super().to_dict()
        if self.gemma3_reads_exactly:
            output["model_type"] = NATIVE_MODEL_TYPE
            output["use_bidirectional_attention"] = True
        return output

    def check_fields(self):
        """Checks the fields that the model relies on; each error says what was wrong and what is expected."""
        sizes = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        )
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} in the config: expected a positive int (a size of the model).")
        for name, limit in (("num_hidden_layers", MAX_LAYERS), ("max_position_embeddings", MAX_POSITIONS)):
            if getattr(self, name) > limit:
                raise ValueError(
                    f"{name}={getattr(self, name)} in the config is beyond any EmbeddingGemma-family model (at most "
                    f"{limit:,} here); the config is damaged or not this model's."
                )
        bad_features = [f for f in self.dense_out_features if isinstance(f, bool) or not isinstance(f, int) or f <= 0]
        if bad_features:
            raise ValueError(f"dense_out_features={self.dense_out_features}: expected positive ints.")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps!r}: expected a positive number.")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}; "
                "give one type per layer."
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"layer_types contains {unknown}; expected only {LAYER_TYPES}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}."
            )
        if self.sliding_window_convention not in SLIDING_WINDOW_CONVENTIONS:
            raise ValueError(
                f"sliding_window_convention={self.sliding_window_convention!r} is not supported; "
                f"expected one of {SLIDING_WINDOW_CONVENTIONS}."
            )
        if "sliding_attention" in self.layer_types and not (
            isinstance(self.sliding_window, int)
            and not isinstance(self.sliding_window, bool)
            and self.sliding_window > 0
        ):
            raise ValueError(f"sliding_window={self.sliding_window!r} must be a positive int when layers slide.")
        if self.pooling_mode not in POOLING_MODES:
            raise ValueError(f"pooling_mode={self.pooling_mode!r} is not supported; expected one of {POOLING_MODES}.")
        dim = self.embedding_dim
        bad_dims = [d for d in self.matryoshka_dims if isinstance(d, bool) or not (isinstance(d, int) and 0 < d <= dim)]
        if len(set(self.matryoshka_dims)) != len(self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} has duplicates; give each dim once.")
        if bad_dims:
            raise ValueError(
                f"matryoshka_dims {bad_dims} must be positive ints no larger than the embedding dim {dim}."
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name={self.default_prompt_name!r} is not one of the prompts {sorted(self.prompts)}."
            )
        if "{title}" not in self.document_title_template:
            raise ValueError(f"document_title_template={self.document_title_template!r} must contain '{{title}}'.")

    def prompt_for(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The text to prepend: `prompt` if given (it wins over `prompt_name`, as in sentence-transformers), else
        the prompt named `prompt_name`, else the default prompt (none unless `default_prompt_name` is set)."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}.")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"Unknown prompt_name={name!r}; this model knows {list(self.prompts)}.")
        return self.prompts[name]

    def document_prompt(self, title: str | None = None) -> str:
        """The document prompt with a title ("title: none" without one), as the model card writes it."""
        return self.document_title_template.format(title=title if title else "none")

    @property
    def embedding_dim(self) -> int:
        """Size of `sentence_embedding`: the last Dense layer's output, or the hidden size without a head."""
        return self.dense_out_features[-1] if self.dense_out_features else self.hidden_size

    @property
    def projection_dim(self) -> int:
        """`embedding_dim` under the name sentence-transformers reads for models that output sentence embeddings
        (its `get_sentence_embedding_dimension()` would otherwise report the hidden size)."""
        return self.embedding_dim

    @property
    def attention_window(self) -> tuple[int, int]:
        """Inclusive (left, right) distances a query may look on sliding layers: key j is visible from query i
        iff `-left <= j - i <= right`. Derived from the declared `sliding_window`, which is never rewritten
        (transformers once halved it on every save/reload: huggingface/transformers#47940)."""
        window = self.sliding_window
        if self.sliding_window_convention == "embeddinggemma":
            return window // 2, window // 2
        if self.sliding_window_convention == "t5gemma2":
            return (window + 1) // 2 - 1, window // 2
        return window, window
