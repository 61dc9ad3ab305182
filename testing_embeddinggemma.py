# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Tiny EmbeddingGemma-shaped models and tokenizers, built offline in seconds, for tests and demos.

Nothing here downloads anything: the tokenizer is a SentencePiece model trained on a built-in corpus, and the
reference checkpoints are made with transformers' own `Gemma3TextModel(use_bidirectional_attention=True)` and
sentence-transformers' own modules.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from configuration_embeddinggemma import EMBEDDINGGEMMA_PROMPTS, EmbeddingGemmaConfig


# One sliding and one full layer with a window of 4 (+-2 tokens), so 16-token inputs exercise the window;
# 2 query heads share 1 KV head as in the real model's 3:1.
TINY_ENCODER = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    query_pre_attn_scalar=32,
    max_position_embeddings=128,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    sliding_window=4,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
)
TINY_HEAD = dict(dense_out_features=[128, 48], matryoshka_dims=[48, 32, 16])

_WORDS = (
    "the a man woman dog cat is are playing eating running on in with guitar piano red planet mars jupiter venus "
    "saturn search query text title none task result sentence similarity document water blue sky big small fast "
    "slow house car tree known as for its reddish appearance gas giant largest which of our solar system"
).split()


def tiny_config(**overrides) -> EmbeddingGemmaConfig:
    return EmbeddingGemmaConfig(**{**TINY_ENCODER, **TINY_HEAD, **overrides})


def train_tiny_tokenizer(folder: str | Path, max_length: int = 128):
    """Trains a ~320-piece SentencePiece BPE model with Gemma's special ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3)
    and saves it as a GemmaTokenizer that adds <bos> and <eos> and pads right, like EmbeddingGemma's."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + " ." for _ in range(2000)]
    lines += list(EMBEDDINGGEMMA_PROMPTS.values()) + ["Which planet is known as the Red Planet?"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        add_dummy_prefix=False,
        split_by_whitespace=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    tokenizer_config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": True,
        "padding_side": "right",
        "model_max_length": max_length,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrites every parameter with N(0, std), norms included, so that parity tests see non-trivial values
    (a fresh model's zero norm weights would hide a norm applied in the wrong place)."""
    generator = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters()):
        param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def reference_gemma3_config(**overrides):
    """transformers' own Gemma3TextConfig for the tiny encoder, bidirectional as EmbeddingGemma's."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**{**TINY_ENCODER, **overrides}, use_bidirectional_attention=True)


def build_tiny_sentence_transformer(folder: str | Path, seed: int = 0, dense_out_features=None):
    """A tiny checkpoint in google/embeddinggemma-300m's layout, made by transformers' Gemma3TextModel and
    sentence-transformers' Transformer/Pooling/Dense/Dense/Normalize, with the 14 prompts; saved to `folder`.
    `dense_out_features` sets the head's sizes ([128, 48] by default; [128, 768] gives the real model's 768-d output
    and so its Matryoshka dims)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import Gemma3TextModel

    folder = Path(folder)
    backbone_dir = folder.parent / f"{folder.name}-backbone"
    train_tiny_tokenizer(backbone_dir)
    backbone = randomize_(Gemma3TextModel(reference_gemma3_config()), seed=seed)
    backbone.save_pretrained(backbone_dir)

    generator = torch.Generator().manual_seed(seed + 1)
    dims = [TINY_ENCODER["hidden_size"], *(dense_out_features or TINY_HEAD["dense_out_features"])]
    dense = [
        Dense(
            i,
            o,
            bias=False,
            activation_function=torch.nn.Identity(),
            init_weight=torch.randn(o, i, generator=generator) * 0.1,
        )
        for i, o in zip(dims[:-1], dims[1:])
    ]
    modules = [Transformer(str(backbone_dir)), Pooling(dims[0], "mean"), *dense, Normalize()]
    model = SentenceTransformer(modules=modules, prompts=dict(EMBEDDINGGEMMA_PROMPTS), device="cpu")
    model.save(str(folder))
    # transformers < 5.24 saves a bidirectional Gemma 3 config with its window halved (512 -> 257 -> 129 ...:
    # huggingface/transformers#47940); write the declared window back, as google/embeddinggemma-300m has it.
    for config_path in (folder / "config.json", backbone_dir / "config.json"):
        config = json.loads(config_path.read_text())
        config["sliding_window"] = TINY_ENCODER["sliding_window"]
        config_path.write_text(json.dumps(config, indent=2))
    return model


def _tiny_text_config(**overrides) -> dict:
    """The tiny encoder as a Gemma 3 text config dict (no RoPE legacy keys: the classes set their own)."""
    config = {k: v for k, v in TINY_ENCODER.items() if k not in ("rope_theta", "rope_local_base_freq")}
    return {**config, **overrides}


def _save_llm_tokenizer(folder: Path) -> None:
    """The tiny tokenizer set up as Gemma LLM tokenizers are: <bos> only, left padding (the converter fixes both)."""
    tokenizer = train_tiny_tokenizer(folder)
    tokenizer.add_eos_token = False
    if hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)


def build_tiny_gemma3(folder: str | Path, kind: str = "causal", seed: int = 0):
    """A tiny Gemma 3 decoder saved by transformers: "causal" (Gemma3ForCausalLM) or "conditional"
    (Gemma3ForConditionalGeneration, with a tiny SigLIP vision tower)."""
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig

    folder = Path(folder)
    text_config = Gemma3TextConfig(**_tiny_text_config())
    if kind == "causal":
        model = Gemma3ForCausalLM(text_config)
    else:
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        config = Gemma3Config(
            text_config=text_config.to_dict(),
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=300,
            eoi_token_index=301,
            image_token_index=302,
        )
        model = Gemma3ForConditionalGeneration(config)
    randomize_(model, seed=seed)
    model.save_pretrained(folder)
    _save_llm_tokenizer(folder)
    return model


def build_tiny_t5gemma(folder: str | Path, seed: int = 0):
    """A tiny T5Gemma (v1) encoder-decoder: Gemma 2 blocks, softcapping 50, alternating layers, window 4."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    module = T5GemmaModuleConfig(
        **{k: v for k, v in _tiny_text_config().items() if k != "layer_types"},
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )
    model = T5GemmaForConditionalGeneration(T5GemmaConfig(encoder=module.to_dict(), decoder=module.to_dict()))
    randomize_(model, seed=seed)
    model.save_pretrained(folder)
    _save_llm_tokenizer(Path(folder))
    return model


T5GEMMA2_EOI = 300


def build_tiny_t5gemma2(folder: str | Path, seed: int = 0, linear_rope_factor: float = 8.0):
    """A tiny T5Gemma 2 encoder-decoder (Gemma 3 blocks, a tiny vision tower, eoi token 300, linear RoPE scaling on
    full-attention layers as the 270M model has)."""
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    rope = {
        "full_attention": {"rope_type": "linear", "factor": linear_rope_factor, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    text = _tiny_text_config(rope_parameters=rope)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    encoder = {
        "text_config": text,
        "vision_config": vision,
        "mm_tokens_per_image": 4,
        "eoi_token_index": T5GEMMA2_EOI,
        "boi_token_index": 301,
        "image_token_index": 302,
    }
    model = T5Gemma2ForConditionalGeneration(
        T5Gemma2Config(encoder=encoder, decoder=text, eoi_token_index=T5GEMMA2_EOI, image_token_index=302)
    )
    randomize_(model, seed=seed)
    model.save_pretrained(folder)
    _save_llm_tokenizer(Path(folder))
    return model
