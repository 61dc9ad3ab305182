# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Building our model from a `Source`: the head, the Matryoshka dims, the tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from configuration_embeddinggemma import EmbeddingGemmaConfig
from embeddinggemma_tools.convert.common import HEAD_INITS, ConversionError, Source
from modeling_embeddinggemma import EmbeddingGemmaModel


# ----------------------------------------------------------------------------------------------------------------
# Building the model
# ----------------------------------------------------------------------------------------------------------------


def default_matryoshka_dims(embedding_dim: int) -> list[int]:
    """EmbeddingGemma's dims (768, 512, 256, 128) that fit, led by the full dim."""
    return [embedding_dim] + [d for d in (512, 256, 128) if d < embedding_dim]


def sentence_transformers_dense_modules(path: Path) -> list[str]:
    """The Dense modules a sentence-transformers folder lists in modules.json (its trained head), or []."""
    modules_file = path / "modules.json" if path.is_dir() else None
    if modules_file is None or not modules_file.is_file():
        return []
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError):
        return []
    return [m.get("path", "") for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Dense")]


def add_head(source: Source, head_init: str, embedding_dim: int | None, seed: int = 0) -> None:
    """Gives a headless source (a decoder or T5Gemma encoder) EmbeddingGemma's head shape: Dense(hidden -> 4D),
    Dense(4D -> D), no bias, no activation. "identity": W2 @ W1 = I (rectangular when D != hidden), so before training
    the sentence embedding is the L2-normalised mean of the final hidden states (its first D dims). "random": the
    paper's randomly initialised projection."""
    if head_init not in HEAD_INITS:
        raise ConversionError(f"--head-init {head_init!r} is not supported; expected one of {HEAD_INITS}.")
    hidden = source.fields["hidden_size"]
    dim = embedding_dim or hidden
    if dim < 1:
        raise ConversionError(f"--embedding-dim {dim} must be positive.")
    dtype = source.state_dict["model.embed_tokens.weight"].dtype
    if head_init == "identity":
        first, second = torch.eye(4 * dim, hidden, dtype=dtype), torch.eye(dim, 4 * dim, dtype=dtype)
    else:
        generator = torch.Generator().manual_seed(seed)
        first = torch.randn(4 * dim, hidden, generator=generator) / hidden**0.5
        second = torch.randn(dim, 4 * dim, generator=generator) / (4 * dim) ** 0.5
    source.state_dict.update({"dense.0.weight": first.to(dtype), "dense.1.weight": second.to(dtype)})
    source.fields.update(dense_out_features=[4 * dim, dim], dense_bias=False, dense_activation="identity")
    source.added_head = head_init
    source.notes.append(f"added a new head ({head_init} initialisation): Dense {hidden} -> {4 * dim} -> {dim}")


def build_model(fields: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> EmbeddingGemmaModel:
    """Our model holding exactly `state_dict`; every missing, unexpected and mis-shaped key is reported at once."""
    if not fields.get("matryoshka_dims"):
        dense = fields.get("dense_out_features")
        fields["matryoshka_dims"] = default_matryoshka_dims(dense[-1] if dense else fields["hidden_size"])
    try:
        config = EmbeddingGemmaConfig(**fields)
    except (TypeError, ValueError, KeyError) as error:
        raise ConversionError(
            f"The source's configuration is not a valid EmbeddingGemma configuration: {error}"
        ) from error
    from transformers.activations import ACT2FN

    for key in ("hidden_activation", "dense_activation"):
        value = getattr(config, key)
        if value != "identity" and value not in ACT2FN:
            raise ConversionError(
                f"The source's {key}={value!r} is not an activation transformers knows; expected one of "
                f"{sorted(ACT2FN)} (EmbeddingGemma: gelu_pytorch_tanh and identity)."
            )
    with torch.device("meta"):
        model = EmbeddingGemmaModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, config expects {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if problems:
        raise ConversionError(
            "The checkpoint does not match its configuration:\n  " + "\n  ".join(problems) + "\nCheck that the "
            "weights and config.json come from the same model, and that --from names the right source kind."
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
    model.config.dtype = dtype
    return model.eval()


def prepare_tokenizer(tokenizer, max_length: int):
    """The source's tokenizer, set up as EmbeddingGemma's: `<bos> text <eos>`, right padding."""
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs.update(padding_side="right", model_max_length=max_length)  # what save_pretrained writes
    vocab_file = tokenizer.init_kwargs.get("vocab_file")
    if isinstance(vocab_file, str) and os.path.isabs(vocab_file):  # a local path, which a pushed folder would publish
        tokenizer.init_kwargs.pop("vocab_file")
    ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        # Gemma LLM tokenizers add <bos> only; EmbeddingGemma was trained with <eos> too (typesense/typesense#3038).
        tokenizer.add_bos_token, tokenizer.add_eos_token = True, True
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()
        ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        raise ConversionError(
            f"The source tokenizer does not wrap texts in <bos> ... <eos> (got {ids} for 'a') and could not be set "
            "to; EmbeddingGemma needs both."
        )
    return tokenizer
