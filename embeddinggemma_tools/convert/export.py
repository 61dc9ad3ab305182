# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""ONNX and GGUF exports of an EmbeddingGemma model, each verified in the runtime that will run it.

- ONNX (`onnx/model.onnx`, `onnx/model_quantized.onnx`): the layout of Transformers.js and onnx-community repos.
  Inputs `input_ids`, `attention_mask`; outputs `last_hidden_state` and `sentence_embedding` (pooled, Dense head,
  normalised), dynamic batch and length. Exported with `torch.onnx.export(dynamo=True)` from the model's reference
  path; the int8 variant is made by onnxruntime's own dynamic quantization. Verified in onnxruntime.
- GGUF (`NAME-f32.gguf`, `-f16`, `-bf16`, `-q8_0`): llama.cpp's `gemma-embedding` architecture with the Dense head
  (`dense_2`, `dense_3`), mean pooling, the tokenizer and the task prompts in the metadata; written with the `gguf`
  package (its writer and its Q8_0 quantizer). Verified by running llama.cpp's Python bindings on it.

convert_checkpoint.py registers both as `--to` targets; this module has no command line of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ExportError(ValueError):
    """A model or setting that cannot be exported; the message says what was wrong and how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# Settings shared by both exports
# ----------------------------------------------------------------------------------------------------------------

# Sentences of the kinds users embed (queries, documents, captions, news, forum text), with the prompts, for the
# quantized variants' quality check. `--verify-texts FILE` replaces them (docs/conversion.md uses STS-B's test set).
QUALITY_TEXTS = [
    "task: search result | query: Which planet is known as the Red Planet?",
    "title: none | text: Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "task: sentence similarity | query: A man is playing a guitar on the street.",
    "task: sentence similarity | query: Two dogs run through a field of tall grass.",
    "task: sentence similarity | query: The stock market fell sharply after the announcement.",
    "task: sentence similarity | query: A woman is slicing an onion in the kitchen.",
    "task: clustering | query: How do I reset my password if I no longer have the email address?",
    "title: none | text: The central bank raised interest rates by a quarter point on Wednesday.",
    "title: none | text: Photosynthesis converts light energy into chemical energy stored in glucose.",
    "task: classification | query: This movie was a complete waste of two hours.",
    "task: code retrieval | query: sort a list of dictionaries by a key in python",
    "title: none | text: def add(a, b):\n    return a + b",
    "task: search result | query: wie hoch ist der Mount Everest?",
    "title: none | text: 東京は日本の首都です。",
    "a",
    "task: sentence similarity | query: A child is riding a horse.",
]


@dataclass
class ExportOptions:
    """What the exports need beyond the model: the file stem of GGUF files, their types, and the texts the quantized
    variants are checked on."""

    name: str = "model"
    gguf_types: list[str] = field(default_factory=lambda: ["f32"])
    quality_texts: list[str] = field(default_factory=lambda: list(QUALITY_TEXTS))


def require_float32(model, what: str) -> None:
    if model.dtype != torch.float32:
        raise ExportError(
            f"{what} is exported from float32 weights (its own types are chosen with the export's options); got "
            f"--dtype {str(model.dtype).removeprefix('torch.')}. Convert with --dtype float32."
        )


def cosines(actual: np.ndarray, expected: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(torch.as_tensor(np.asarray(actual), dtype=torch.float32), expected.float(), dim=-1)


@torch.no_grad()
def reference_embeddings(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Our model's float32 sentence embeddings of `texts`, in padded batches."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
        out.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).sentence_embedding)
    return torch.cat(out).float()


# ----------------------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------------------

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_quantized.onnx"
ONNX_OPSET = 18
ONNX_ATOL = 1e-5  # float32 graph vs our float32 model, per embedding component
# The int8 variant: every product's weight in 8 bits in blocks of 32 along its input (onnxruntime's MatMulNBits,
# symmetric), with activations quantized per block of each token's row at run time (accuracy_level 4), and the
# token-embedding table int8 per row (Gather, onnxruntime's dynamic quantization). Per token, so a text's result does
# not depend on what it is batched with (docs/conversion.md has its agreement and size against the earlier
# per-tensor scheme, whose padded batches it fixed).
ONNX_INT8_BITS = {"bits": 8, "block_size": 32, "is_symmetric": True, "accuracy_level": 4}
# The floor below which the int8 variant is refused: minimum cosine against our float32 model per text.
ONNX_INT8_MIN_COSINE = 0.99
# ... and on the padded verification batch (short texts beside one longer than the window), as ONNX Runtime and
# Transformers.js users run batches.
ONNX_INT8_PADDED_MIN_COSINE = 0.995


class OnnxGraph(torch.nn.Module):
    """The exported computation: token ids and mask in; token states and the sentence embedding out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state, output.sentence_embedding


def check_onnx_tools() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise ExportError(
            f"--to onnx needs {', '.join(missing)} (torch.onnx's exporter and onnxruntime for the int8 variant and the "
            "check): pip install 'embeddinggemma[onnx]'."
        )


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def export_onnx(folder: Path, model, tokenizer, options: ExportOptions) -> None:
    """Writes `folder/onnx/model.onnx` (float32) and `folder/onnx/model_quantized.onnx` (int8)."""
    require_float32(model, "ONNX")
    check_onnx_tools()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    (folder / ONNX_DIR).mkdir(exist_ok=True)
    path = folder / ONNX_DIR / ONNX_FILE
    example = tokenizer(["a short text", "a text that is a few tokens longer than the first"], padding=True)
    example = (torch.tensor(example["input_ids"]), torch.tensor(example["attention_mask"]))
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("sequence_length", max=model.config.max_position_embeddings)
    was_training = model.training
    model.eval()
    try:
        with exporter_quiet():
            program = torch.onnx.export(
                OnnxGraph(model),
                example,
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state", "sentence_embedding"],
                dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
                optimize=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    program.save(str(path), external_data=False)
    products = folder / ONNX_DIR / f".products-{ONNX_INT8_FILE}"
    with exporter_quiet():
        config = DefaultWeightOnlyQuantConfig(
            op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),), **ONNX_INT8_BITS
        )
        quantizer = MatMulNBitsQuantizer(
            str(path), algo_config=config, op_types_to_quantize=("MatMul",), **ONNX_INT8_BITS
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(products), use_external_data_format=False)
        quantize_dynamic(
            str(products),
            str(folder / ONNX_DIR / ONNX_INT8_FILE),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Gather"],
        )
    products.unlink()


@contextlib.contextmanager
def exporter_quiet():
    """torch.onnx's and onnxruntime's advice that does not apply here (torchvision ops not registered, axis names
    merged, "consider pre-processing"): kept out of the user's terminal; errors still raise."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch.export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def feeds_of(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    return {"input_ids": input_ids.long().numpy(), "attention_mask": attention_mask.long().numpy()}


@torch.no_grad()
def verify_onnx(folder: Path, model, tokenizer, batch: tuple[torch.Tensor, torch.Tensor], options: ExportOptions):
    """Runs both files in onnxruntime: the float32 graph on a padded batch of other shapes than the export example,
    within ONNX_ATOL of our model; the int8 graph's minimum cosine on `options.quality_texts`, refused below
    ONNX_INT8_MIN_COSINE. Returns the figures."""
    import onnxruntime

    input_ids, attention_mask = batch
    expected = model(input_ids=input_ids, attention_mask=attention_mask)
    session = onnxruntime.InferenceSession(str(folder / ONNX_DIR / ONNX_FILE), providers=["CPUExecutionProvider"])
    hidden, embedding = session.run(["last_hidden_state", "sentence_embedding"], feeds_of(input_ids, attention_mask))
    real = attention_mask.bool()
    embedding_diff = float((torch.from_numpy(embedding) - expected.sentence_embedding).abs().max())
    hidden_diff = float((torch.from_numpy(hidden)[real] - expected.last_hidden_state[real]).abs().max())
    scale = float(expected.last_hidden_state[real].abs().max())
    figures = {
        ONNX_FILE: {
            "texts": int(real.shape[0]),
            "longest": int(real.sum(-1).max()),
            "sentence_embedding_max_abs_diff": embedding_diff,
            "last_hidden_state_max_rel_diff": hidden_diff / scale,
        }
    }
    if not (embedding_diff <= ONNX_ATOL and hidden_diff <= ONNX_ATOL * scale):
        raise ExportError(
            f"Verification failed: onnxruntime runs {ONNX_DIR}/{ONNX_FILE} differently from the model "
            f"({figures[ONNX_FILE]}; expected within {ONNX_ATOL}). Nothing was written. Please report this with the "
            "torch and onnxruntime versions."
        )
    texts = options.quality_texts
    reference = reference_embeddings(model, tokenizer, texts)
    session = onnxruntime.InferenceSession(str(folder / ONNX_DIR / ONNX_INT8_FILE), providers=["CPUExecutionProvider"])
    quantized = []
    for start in range(0, len(texts), 16):
        part = tokenizer(texts[start : start + 16], padding=True, return_tensors="pt")
        quantized.append(session.run(["sentence_embedding"], feeds_of(part["input_ids"], part["attention_mask"]))[0])
    cosine = cosines(np.concatenate(quantized), reference)
    # The padded batch with a long text, as ONNX Runtime and Transformers.js users batch: refused below its floor too.
    (padded,) = session.run(["sentence_embedding"], feeds_of(input_ids, attention_mask))
    padded_cosine = cosines(padded, expected.sentence_embedding)
    figures[ONNX_INT8_FILE] = {
        "texts": len(texts),
        "min_cosine": round(float(cosine.min()), 6),
        "mean_cosine": round(float(cosine.mean()), 6),
        "min_cosine_padded_with_a_long_text": round(float(padded_cosine.min()), 6),
        "scheme": "MatMulNBits 8-bit, blocks of 32, per-token activations; Gather int8 per row",
    }
    if not float(padded_cosine.min()) >= ONNX_INT8_PADDED_MIN_COSINE:
        raise ExportError(
            f"Verification failed: the int8 ONNX variant is too far from the float32 model on a padded batch with a "
            f"long text ({figures[ONNX_INT8_FILE]}; the floor is {ONNX_INT8_PADDED_MIN_COSINE}). Nothing was written."
        )
    if not float(cosine.min()) >= ONNX_INT8_MIN_COSINE:
        raise ExportError(
            f"Verification failed: the int8 ONNX variant is too far from the float32 model on the quality texts "
            f"({figures[ONNX_INT8_FILE]}; the floor is {ONNX_INT8_MIN_COSINE}). Nothing was written."
        )
    return figures


# ----------------------------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------------------------

GGUF_ARCH = "gemma-embedding"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp against our float32 model, minimum cosine per text.
GGUF_MIN_COSINE = {"f32": 0.99999, "f16": 0.99999, "bf16": 0.9997, "q8_0": 0.999}
GGUF_POOLING = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}
LLAMA_CPP_HINT = (
    "pip install 'embeddinggemma[llama]' (builds llama.cpp from the package index's llama-cpp-python; about 8 minutes "
    "on 2 cores, cached by pip afterwards)"
)


def gguf_file_name(name: str, gguf_type: str) -> str:
    return f"{name}-{gguf_type}.gguf"


def check_gguf_exportable(model, gguf_types: list[str]) -> None:
    """What llama.cpp's gemma-embedding graph computes, checked against this model's config; anything it would compute
    differently is refused by name (never a silently different model)."""
    config = model.config
    bad = [t for t in gguf_types if t not in GGUF_TYPES]
    if bad or not gguf_types:
        raise ExportError(f"--gguf-type {bad or gguf_types} is not supported; expected some of {GGUF_TYPES}.")
    if not _importable("gguf"):
        raise ExportError("--to gguf needs the gguf package: pip install 'embeddinggemma[gguf]'.")
    left, right = config.attention_window
    dims = [config.hidden_size, *config.dense_out_features]
    problems = {
        "a T5Gemma-derived encoder (not Gemma 3's window, QK-norm and RoPE)": not config.gemma3_reads_exactly,
        f"an asymmetric attention window ({left}, {right})": left != right,
        f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {config.head_dim}": (
            config.query_pre_attn_scalar != config.head_dim
        ),
        f"hidden_activation {config.hidden_activation!r}": config.hidden_activation != "gelu_pytorch_tanh",
        f"pooling_mode {config.pooling_mode!r} (llama.cpp pools by {tuple(GGUF_POOLING)})": (
            config.pooling_mode not in GGUF_POOLING
        ),
        f"a head of {len(config.dense_out_features)} Dense layers (llama.cpp has dense_2 and dense_3)": (
            len(config.dense_out_features) != 2
        ),
        f"a head ending at {dims[-1]} dims (llama.cpp needs the hidden size {dims[0]})": dims[-1] != dims[0],
        "Dense layers with a bias or an activation": config.dense_bias or config.dense_activation != "identity",
    }
    found = [what for what, bad in problems.items() if bad]
    if found:
        raise ExportError(
            "llama.cpp's gemma-embedding architecture cannot run this model as it is: it has "
            + "; ".join(found)
            + ". Export it with --to onnx or keep the transformers format."
        )


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """The tokenizer as llama.cpp's SentencePiece ("llama") vocab: pieces, scores and types. Normal pieces score by
    their rank (SentencePiece orders them by merge priority, so -id keeps llama.cpp's merges the same), specials and
    added pieces -1000, byte pieces 0; types as Gemma 3's own GGUF files have them."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ExportError("--to gguf needs a fast (tokenizer.json) tokenizer.")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ExportError(
            f"--to gguf writes Gemma's SentencePiece vocab; this tokenizer is {model.get('type')} "
            f"(byte_fallback={model.get('byte_fallback')}), which llama.cpp would tokenise differently."
        )
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    pieces = [""] * size
    for piece, index in vocab.items():
        pieces[index] = piece
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    beyond = [index for index in range(vocab_size, size)]
    if any(index not in added for index in beyond):
        raise ExportError(f"The tokenizer has {size} pieces but the model embeds only {vocab_size} ids.")
    pieces = pieces[:vocab_size]
    if any(not piece for piece in pieces):
        raise ExportError("The tokenizer's ids have gaps; llama.cpp needs one piece per id.")
    scores, types = [], []
    for index, piece in enumerate(pieces):
        if index in added:
            special = added[index]["special"]
            if not special:  # matched in the raw text, before SentencePiece's "▁" for spaces (as llama.cpp writes it)
                pieces[index] = added[index]["content"].replace("\u2581", " ")
            scores.append(-1000.0)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            scores.append(0.0)
            types.append(gguf.TokenType.BYTE)
        else:
            scores.append(-float(index))
            types.append(gguf.TokenType.NORMAL)
    return pieces, scores, [int(t) for t in types]


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's names, float32, with Gemma's norm weights stored as 1 + w (as llama.cpp's own
    converter writes them)."""
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().float()
        if key == "model.embed_tokens.weight":
            out["token_embd.weight"] = tensor
        elif key == "model.norm.weight":
            out["output_norm.weight"] = tensor + 1
        elif key.startswith("dense."):
            index, kind = key.split(".")[1:]
            out[f"dense_{int(index) + 2}.{kind}"] = tensor
        else:
            match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", key)
            if not match or match.group(2) not in names:
                raise ExportError(f"The weight {key} has no place in llama.cpp's gemma-embedding graph.")
            layer, part = match.groups()
            shift = 1 if "norm" in names[part] else 0
            out[f"blk.{layer}.{names[part]}.weight"] = tensor + shift
    return out


def write_gguf(path: Path, model, tokenizer, gguf_type: str, name: str, vocab=None) -> None:
    """One GGUF file of `model` with its tensors in `gguf_type` (1-D tensors, the norms, stay float32 as in llama.cpp's
    own files); `vocab` is `gguf_vocab`'s result when the caller has it already."""
    import gguf

    config = model.config
    quant = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[gguf_type]
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[gguf_type]
    writer = gguf.GGUFWriter(str(path), GGUF_ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_freq_base_swa(config.rope_local_base_freq)
    left, right = config.attention_window
    writer.add_sliding_window(left + right)  # llama.cpp's symmetric window: visible iff |i - j| <= n_swa / 2
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
    writer.add_pooling_type(getattr(gguf.PoolingType, GGUF_POOLING[config.pooling_mode]))
    head = [config.hidden_size, *config.dense_out_features]
    writer.add_dense_features_dims("dense_2", head[0], head[1])
    writer.add_dense_features_dims("dense_3", head[1], head[2])
    pieces, scores, types = vocab or gguf_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_space_prefix(False)
    # The task prompts and Matryoshka dims, for runtimes and users that read them (llama.cpp applies none itself).
    writer.add_string("embeddinggemma.prompts", json.dumps(config.prompts, ensure_ascii=False))
    writer.add_string("embeddinggemma.default_prompt_name", config.default_prompt_name or "")
    writer.add_array("embeddinggemma.matryoshka_dims", list(config.matryoshka_dims))
    writer.add_bool("embeddinggemma.normalize", bool(config.normalize_embeddings))  # llama.cpp never does itself
    tensors = gguf_tensors(model)
    tensors["token_embd.weight"] = tensors["token_embd.weight"][: len(pieces)]  # ids no text maps to (as llama.cpp)
    for tensor_name, tensor in tensors.items():
        data = tensor.numpy()
        if data.ndim == 1 or gguf_type == "f32":
            writer.add_tensor(tensor_name, data.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32)
            continue
        block = gguf.GGML_QUANT_SIZES[quant][0]
        if data.shape[-1] % block:
            raise ExportError(
                f"{tensor_name} has rows of {data.shape[-1]}, not a multiple of {gguf_type}'s block of {block}; "
                "export it as f32, f16 or bf16."
            )
        writer.add_tensor(tensor_name, gguf.quantize(data, quant), raw_dtype=quant)  # the gguf package's rounding
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(folder: Path, model, tokenizer, options: ExportOptions) -> None:
    require_float32(model, "GGUF")
    check_gguf_exportable(model, options.gguf_types)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size)  # refuses an unsupported tokenizer before any file
    for gguf_type in options.gguf_types:
        write_gguf(folder / gguf_file_name(options.name, gguf_type), model, tokenizer, gguf_type, options.name, vocab)


def llama_cpp_available() -> bool:
    return _importable("llama_cpp")


@torch.no_grad()
def llama_cpp_embeddings(path: Path, texts: list[str], threads: int | None = None):
    """llama.cpp's embeddings of `texts` (unnormalised, as llama.cpp returns them) and its token ids."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        embedding=True,
        n_ctx=4096,
        n_batch=4096,
        n_ubatch=4096,
        n_threads=threads or torch.get_num_threads(),
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
        verbose=False,
    )
    try:
        ids = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) for text in texts]
        # llama.cpp packs the texts into batches itself; a text longer than a batch raises instead of being cut
        embeddings = llm.embed(texts, normalize=False, truncate=False)
        return np.asarray(embeddings, dtype=np.float32), ids
    finally:
        llm.close()


@torch.no_grad()
def verify_gguf(folder: Path, model, tokenizer, texts: list[str], options: ExportOptions) -> dict:
    """Runs each GGUF file in llama.cpp on `texts` (one longer than the window): the token ids must be the tokenizer's
    and the normalised embeddings within GGUF_MIN_COSINE of our float32 model. Returns the figures, or why it could not
    run (no bindings)."""
    if not llama_cpp_available():
        return {"verified": False, "reason": f"llama.cpp's Python bindings are not installed: {LLAMA_CPP_HINT}"}
    expected_ids = [tokenizer(text)["input_ids"] for text in texts]
    reference = reference_embeddings(model, tokenizer, texts)
    figures = {"verified": True, "texts": len(texts), "longest": max(len(i) for i in expected_ids)}
    for gguf_type in options.gguf_types:
        file = gguf_file_name(options.name, gguf_type)
        embeddings, ids = llama_cpp_embeddings(folder / file, texts)
        wrong = [i for i, (a, b) in enumerate(zip(ids, expected_ids)) if list(a) != list(b)]
        if wrong:
            raise ExportError(
                f"Verification failed: llama.cpp tokenises {file} differently from the tokenizer (text {wrong[0]}: "
                f"{list(ids[wrong[0]])[:12]}... vs {expected_ids[wrong[0]][:12]}...). Nothing was written."
            )
        cosine = cosines(embeddings, reference)
        norms = np.linalg.norm(embeddings, axis=-1)
        figures[file] = {
            "min_cosine": round(float(cosine.min()), 7),
            "llama_cpp_norm": [round(float(norms.min()), 2), round(float(norms.max()), 2)],
        }
        if not float(cosine.min()) >= GGUF_MIN_COSINE[gguf_type]:
            raise ExportError(
                f"Verification failed: llama.cpp runs {file} differently from the model (minimum cosine "
                f"{float(cosine.min()):.7f}, expected >= {GGUF_MIN_COSINE[gguf_type]}). Nothing was written."
            )
    return figures
