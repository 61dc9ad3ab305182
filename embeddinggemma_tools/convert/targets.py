# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Each `--to` target with its writer and its verifier side by side (`TARGETS`), and the verification they share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from configuration_embeddinggemma import POOLING_FLAGS, EmbeddingGemmaConfig
from embeddinggemma_tools.convert.common import MIN_COSINE, VERIFY_TEXTS, ConversionError, ReferenceUnavailable, Source
from embeddinggemma_tools.convert.export import (
    ONNX_FILE,
    ExportOptions,
    export_gguf,
    export_onnx,
    reference_embeddings,
    verify_gguf,
    verify_onnx,
)
from embeddinggemma_tools.convert.sources import ENCODER_KEYS
from modeling_embeddinggemma import EmbeddingGemmaModel, pool


# ----------------------------------------------------------------------------------------------------------------
# Verification, export, model card, upload
# ----------------------------------------------------------------------------------------------------------------


def verification_texts(tokenizer, config: EmbeddingGemmaConfig) -> list[str]:
    """A few texts, one of them longer than the sliding window (so the window is checked too) but within the model's
    and the tokenizer's maximum length: whole strings, for runtimes that tokenise themselves."""
    left, right = config.attention_window
    target = min(left + right + 64, config.max_position_embeddings, tokenizer.model_max_length or 10**9)
    sentences = []
    while True:
        candidate = " ".join([*sentences, f"planet {len(sentences)} orbits a quiet star."])
        if len(sentences) > 4 * target or len(tokenizer(candidate)["input_ids"]) > target:
            break
        sentences.append(f"planet {len(sentences)} orbits a quiet star.")
    return VERIFY_TEXTS + [" ".join(sentences)]


def verification_batch(tokenizer, config: EmbeddingGemmaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`verification_texts`, tokenised and right-padded."""
    batch = tokenizer(verification_texts(tokenizer, config), padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def agreement(
    actual: torch.Tensor, expected: torch.Tensor, attention_mask: torch.Tensor, compared: str, dtype: torch.dtype
) -> dict:
    """The verification figures of `actual` against `expected` (rows: tokens or texts) on a padded batch."""
    actual, expected = actual.float(), expected.float()
    cosine = F.cosine_similarity(actual, expected, dim=-1)
    return {
        "verified": True,
        "compared": compared,
        "texts": int(attention_mask.shape[0]),
        "tokens": int(attention_mask.sum()),
        "longest": int(attention_mask.sum(-1).max()),
        "min_cosine": round(float(cosine.min()), 8),
        "max_abs_diff": float((actual - expected).abs().max()),
        "dtype": str(dtype).removeprefix("torch."),
    }


@torch.no_grad()
def verify_embeddinggemma(folder: Path, source: Source, model: EmbeddingGemmaModel, tokenizer, export=None) -> dict:
    """Loads the written folder through AutoModel (remote code), checks that its weights are exactly the source's
    (always), and compares it with the source framework's own model on a few texts (when that framework runs here).
    Returns the figures; raises on changed weights or a cosine below MIN_COSINE for the output dtype."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=model.dtype).eval()  # the code written
    changed = changed_weights(model.state_dict(), source.state_dict, model.dtype)
    if changed:
        raise ConversionError(
            f"Verification failed: the written weights are not the source's (cast to "
            f"{str(model.dtype).removeprefix('torch.')}): {changed[:10]} differ. Nothing was written. Please report "
            "this with the source checkpoint's name."
        )
    try:
        reference = source.reference()
    except ReferenceUnavailable as reason:
        return {"verified": False, "reason": str(reason)}
    input_ids, attention_mask = verification_batch(tokenizer, model.config)
    ours = model(input_ids=input_ids, attention_mask=attention_mask)
    what, expected = reference(input_ids, attention_mask)
    real = attention_mask.bool()
    if what == "hidden":
        actual, expected = ours.last_hidden_state[real], expected[real]  # (real tokens, hidden)
        figures = agreement(actual, expected, real, "encoder last_hidden_state per real token", model.dtype)
    else:
        figures = agreement(ours.sentence_embedding, expected, real, "sentence_embedding per text", model.dtype)
    if source.identity_head:
        # With the identity head the embedding is the normalised mean of the hidden states: its first D dims when
        # D < hidden, zero-padded to D when D > hidden.
        dim = model.config.embedding_dim
        pooled = pool(ours.last_hidden_state.float(), real, model.config.pooling_mode)[:, :dim]
        pooled = F.normalize(F.pad(pooled, (0, dim - pooled.shape[-1])), dim=-1)
        figures["identity_head_max_abs_diff"] = float((pooled - ours.sentence_embedding.float()).abs().max())
    threshold = MIN_COSINE[model.dtype]
    if not figures["min_cosine"] >= threshold:
        raise ConversionError(
            f"Verification failed: the converted model disagrees with the source framework's ({figures}); expected a "
            f"minimum cosine of {threshold} for {figures['dtype']}. Nothing was written. Please report this with the "
            "source checkpoint's name."
        )
    return figures


def changed_weights(
    written: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype
) -> list[str]:
    """Names of the written weights (as the written folder loads) that are not exactly the source's after the cast to
    `dtype` (or are missing or extra): a conversion only renames, folds and casts, so anything else is damage. Exact,
    whatever the dtype, where the cosine check can only be as fine as bfloat16's rounding."""
    names = sorted(set(written) | set(expected))
    return [
        name
        for name in names
        if name not in written or name not in expected or not torch.equal(written[name], expected[name].to(dtype))
    ]


def gemma3_text_config(config: EmbeddingGemmaConfig) -> dict:
    """The `Gemma3TextModel` config.json that sentence-transformers, TEI, vLLM and llama.cpp read, with the legacy
    keys TEI requires (`rope_theta`, `rope_local_base_freq`, `_sliding_window_pattern`)."""
    if config.sliding_window_convention != "embeddinggemma" or not config.use_qk_norm or config.attn_logit_softcapping:
        raise ConversionError(
            "This model cannot be written as a Gemma3TextModel: it comes from T5Gemma (sliding_window_convention="
            f"{config.sliding_window_convention!r}, use_qk_norm={config.use_qk_norm}, attn_logit_softcapping="
            f"{config.attn_logit_softcapping}), which Gemma 3 cannot express. Keep the embeddinggemma format."
        )
    full = [i for i, t in enumerate(config.layer_types) if t == "full_attention"]
    pattern = full[0] + 1 if full and full == list(range(full[0], config.num_hidden_layers, full[0] + 1)) else None
    out = {
        "architectures": ["Gemma3TextModel"],
        "model_type": "gemma3_text",
        **{key: getattr(config, key) for key in ENCODER_KEYS},
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "rope_theta": config.rope_theta,
        "rope_local_base_freq": config.rope_local_base_freq,
        "rope_scaling": None
        if config.rope_linear_factor == 1.0
        else {"rope_type": "linear", "factor": config.rope_linear_factor},
        "use_bidirectional_attention": True,
        "use_cache": False,
        "is_matryoshka": True,
        "matryoshka_dimensions": config.matryoshka_dims,
        "dtype": str(config.dtype).removeprefix("torch.") if config.dtype else "float32",
    }
    if pattern:
        out["_sliding_window_pattern"] = pattern
    return out


def write_embeddinggemma(folder: Path, model: EmbeddingGemmaModel, tokenizer, export=None) -> None:
    """This package's folder: config, safetensors, tokenizer, code and the sentence-transformers view files, as
    `EmbeddingGemmaModel.save_pretrained` writes them."""
    model.tokenizer = tokenizer
    model.save_pretrained(folder, safe_serialization=True)


def export_sentence_transformers(
    folder: Path, model: EmbeddingGemmaModel, tokenizer, export=None, encoder_weights: bool = True
) -> None:
    """google/embeddinggemma-300m's layout: bare Gemma3TextModel keys, 1_Pooling (verbose legacy schema), N_Dense,
    modules.json with the classic `sentence_transformers.models.*` paths, prompts. Without `encoder_weights` (an ONNX
    folder, whose graph holds them) everything but the encoder's model.safetensors."""
    config = model.config
    state = model.state_dict()
    (folder / "config.json").write_text(json.dumps(gemma3_text_config(config), indent=2) + "\n")
    if encoder_weights:
        save_file(
            {k.removeprefix("model."): v.contiguous() for k, v in state.items() if k.startswith("model.")},
            folder / "model.safetensors",
            metadata={"format": "pt"},
        )
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        **{f"pooling_mode_{flag}": mode == config.pooling_mode for mode, flag in POOLING_FLAGS.items()},
        "include_prompt": True,
    }
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=4) + "\n")
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    activation = (
        "torch.nn.modules.linear.Identity" if config.dense_activation == "identity" else config.dense_activation
    )
    for index, layer in enumerate(model.dense):
        name = f"{index + 2}_Dense"
        (folder / name).mkdir()
        dense = {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bias": config.dense_bias,
            "activation_function": activation,
        }
        (folder / name / "config.json").write_text(json.dumps(dense, indent=4) + "\n")
        prefix = f"dense.{index}."
        tensors = {"linear." + k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
        save_file(tensors, folder / name / "model.safetensors", metadata={"format": "pt"})
        modules.append(
            {"idx": index + 2, "name": str(index + 2), "path": name, "type": "sentence_transformers.models.Dense"}
        )
    if config.normalize_embeddings:
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    bert_config = {"max_seq_length": config.max_position_embeddings, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(bert_config, indent=4) + "\n")
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": config.prompts,
        "default_prompt_name": config.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    tokenizer.save_pretrained(folder)


@torch.no_grad()
def verify_sentence_transformers(
    folder: Path, source: Source, model: EmbeddingGemmaModel, tokenizer, export=None
) -> dict:
    """An exported sentence-transformers folder against our model."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return {
            "verified": False,
            "reason": "sentence-transformers is not installed (pip install 'embeddinggemma[st]')",
        }
    st = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": model.dtype})
    input_ids, attention_mask = verification_batch(tokenizer, model.config)
    expected = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding  # in the export's dtype
    actual = st.forward({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]
    figures = agreement(actual, expected, attention_mask, "sentence_embedding per text", model.dtype)
    if not figures["min_cosine"] >= MIN_COSINE[model.dtype]:
        raise ConversionError(f"Verification failed: sentence-transformers reads the export differently ({figures}).")
    return figures


@dataclass(frozen=True)
class Target:
    write: Callable[..., None]  # (folder, model, tokenizer, export)
    verify: Callable[..., dict]  # (folder, source, model, tokenizer, export) -> figures
    loads_with: str  # what the final message tells the user to run
    base: bool = True  # a folder layout of its own; False: a variant added beside one (onnx/, *.gguf)


@dataclass
class Export:
    """What one conversion's writers and verifiers share: the targets written together and the variants' options."""

    targets: tuple[str, ...]
    options: ExportOptions

    @property
    def base(self) -> str | None:
        return next((name for name in self.targets if TARGETS[name].base), None)


def write_onnx_target(folder: Path, model: EmbeddingGemmaModel, tokenizer, export: Export) -> None:
    """onnx/model.onnx and onnx/model_quantized.onnx; alone, beside the config, tokenizer and sentence-transformers
    modules they need (the sentence-transformers layout without the encoder's safetensors: its weights are in the
    graph), as onnx-community repos have them."""
    if export.base is None:
        if model.config.gemma3_reads_exactly:
            export_sentence_transformers(folder, model, tokenizer, export, encoder_weights=False)
        else:
            model.config.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    export_onnx(folder, model, tokenizer, export.options)


def st_onnx_backend_applies(export: Export, config) -> bool:
    """sentence-transformers' ONNX backend (optimum's ORTModelForFeatureExtraction) reads only `last_hidden_state`, so
    it runs the export only in the google/embeddinggemma-300m layout (Transformer, Pooling, Dense, Normalize). In the
    `embeddinggemma` layout the single module's output is `sentence_embedding`, which optimum does not return."""
    return export.base != "embeddinggemma" and bool(config.gemma3_reads_exactly)


@torch.no_grad()
def verify_onnx_target(folder: Path, source: Source, model: EmbeddingGemmaModel, tokenizer, export: Export) -> dict:
    """Both ONNX files in onnxruntime, and sentence-transformers' ONNX backend on the folder when it has the
    sentence-transformers layout and optimum is installed."""
    figures = verify_onnx(folder, model, tokenizer, verification_batch(tokenizer, model.config), export.options)
    if not st_onnx_backend_applies(export, model.config):
        return figures
    try:
        import optimum.onnxruntime  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError:
        figures["sentence-transformers backend=onnx"] = (
            "not checked: needs sentence-transformers and optimum (pip install 'embeddinggemma[st-onnx]')"
        )
        return figures
    st = SentenceTransformer(str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/{ONNX_FILE}"})
    texts = verification_texts(tokenizer, model.config)
    actual = torch.as_tensor(st.encode(texts, batch_size=len(texts), convert_to_numpy=True))
    expected = reference_embeddings(model, tokenizer, texts)
    cosine = torch.nn.functional.cosine_similarity(actual, expected, dim=-1)
    figures["sentence-transformers backend=onnx"] = {"texts": len(texts), "min_cosine": round(float(cosine.min()), 8)}
    if not float(cosine.min()) >= MIN_COSINE[torch.float32]:
        raise ConversionError(
            f"Verification failed: sentence-transformers' ONNX backend reads the export differently "
            f"({figures['sentence-transformers backend=onnx']})."
        )
    return figures


def write_gguf_target(folder: Path, model: EmbeddingGemmaModel, tokenizer, export: Export) -> None:
    export_gguf(folder, model, tokenizer, export.options)


def verify_gguf_target(folder: Path, source: Source, model: EmbeddingGemmaModel, tokenizer, export: Export) -> dict:
    texts = verification_texts(tokenizer, model.config) + list(export.options.quality_texts)
    return verify_gguf(folder, model, tokenizer, texts, export.options)


TARGETS = {
    "embeddinggemma": Target(
        write_embeddinggemma, verify_embeddinggemma, "AutoModel.from_pretrained({path!r}, trust_remote_code=True)"
    ),
    "sentence-transformers": Target(
        export_sentence_transformers, verify_sentence_transformers, "SentenceTransformer({path!r})"
    ),
    "onnx": Target(
        write_onnx_target,
        verify_onnx_target,
        "onnxruntime.InferenceSession({path!r} + '/onnx/model.onnx') (output 'sentence_embedding')",
        base=False,
    ),
    "gguf": Target(
        write_gguf_target,
        verify_gguf_target,
        "llama.cpp: llama-embedding -m {path}/NAME-TYPE.gguf (normalise the output)",
        base=False,
    ),
}


def parse_targets(to: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`--to` as given (one name, "a,b" or a list) -> the targets, checked: known names, each once, at most one
    folder layout (embeddinggemma or sentence-transformers); the variants (onnx, gguf) go beside it or alone."""
    names = [to] if isinstance(to, str) else list(to)
    names = [part.strip().lower() for name in names for part in name.split(",") if part.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise ConversionError(
            f"--to {','.join(unknown) or repr(to)} is not supported; expected one or more of {tuple(TARGETS)}, "
            "comma-separated (e.g. --to sentence-transformers,onnx,gguf)."
        )
    if len(set(names)) != len(names):
        raise ConversionError(f"--to {','.join(names)} names a target twice.")
    bases = [name for name in names if TARGETS[name].base]
    if len(bases) > 1:
        raise ConversionError(
            f"--to {','.join(names)} asks for two folder layouts ({' and '.join(bases)}); a folder has one. Convert "
            "twice, into two folders."
        )
    return tuple(sorted(names, key=list(TARGETS).index))  # the layout first, then the variants beside it


def required_space(targets: tuple[str, ...], weight_bytes: int, gguf_types: list[str]) -> int:
    """Bytes the written folder needs, with some room: the layouts' safetensors, ONNX float32 + int8, each GGUF."""
    share = {"embeddinggemma": 1.1, "sentence-transformers": 2.1, "onnx": 1.4}
    gguf_share = {"f32": 1.0, "f16": 0.5, "bf16": 0.5, "q8_0": 0.27}
    total = sum(share.get(name, 0.0) for name in targets)
    if "gguf" in targets:
        total += sum(gguf_share.get(t, 1.0) for t in gguf_types)
    return int(weight_bytes * total) + 2**24
