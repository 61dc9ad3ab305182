# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Convert checkpoints into one self-contained EmbeddingGemma folder (config, safetensors, tokenizer, code), and back.

    embeddinggemma-convert --from sentence-transformers google/embeddinggemma-300m ./embeddinggemma-300m
    embeddinggemma-convert --from gemma3 google/gemma-3-270m ./gemma3-encoder            # decoder -> encoder
    embeddinggemma-convert --from gemma3 ./gemma-3-270m-q4_k_m.gguf ./gemma3-encoder     # GGUF decoder
    embeddinggemma-convert --from t5gemma google/t5gemma-2b-2b-ul2 ./t5gemma-encoder
    embeddinggemma-convert --from t5gemma2 google/t5gemma-2-270m-270m ./t5gemma2-encoder
    embeddinggemma-convert --from embeddinggemma ./embeddinggemma-300m ./st --to sentence-transformers

SOURCE is a local folder, a Hub id or (gemma3) a .gguf file. The output is written to a temporary folder beside
OUTPUT_DIR, verified against the source framework's own model (--no-verify to skip), and only then moved into
place; a non-empty OUTPUT_DIR is refused unless --overwrite is given. Weights are read from safetensors (or GGUF)
only: nothing is unpickled. See docs/conversion.md for what each source keeps, renames, folds and drops.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from configuration_embeddinggemma import MODEL_TYPES, POOLING_MODES, EmbeddingGemmaConfig, is_embeddinggemma_config
from embeddinggemma_tools.files import process_alive
from export_embeddinggemma import (
    GGUF_TYPES,
    ONNX_FILE,
    ONNX_INT8_FILE,
    ExportError,
    ExportOptions,
    check_gguf_exportable,
    check_onnx_tools,
    export_gguf,
    export_onnx,
    gguf_file_name,
    gguf_vocab,
    reference_embeddings,
    require_float32,
    verify_gguf,
    verify_onnx,
)
from modeling_embeddinggemma import EmbeddingGemmaModel, pool


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HEAD_INITS = ("identity", "random")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*/config.json", "*/*.safetensors"]
# Verification: the converted model against the source framework's own, per output dtype (cosine per token or text).
# Calibrated on the real google/embeddinggemma-300m and a tiny model (docs/conversion.md): a clean bfloat16 conversion
# gives 0.99989 (real) and 0.99994 (tiny); 20% noise in one MLP matrix gives 0.99956 (real, bfloat16).
MIN_COSINE = {torch.float32: 0.99999, torch.bfloat16: 0.9997}
VERIFY_TEXTS = [
    "Which planet is known as the Red Planet?",
    "title: none | text: Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "a",
]


class ConversionError(ValueError):
    """A source that cannot be converted; the message says what was wrong and how to fix it."""


class ReferenceUnavailable(Exception):
    """The source framework's own model cannot be run here (not installed, or a version that differs); verification
    is then skipped, saying why."""


@dataclass
class Source:
    """What a reader extracts from a checkpoint: our config fields and weights (head weights only if the source
    has a head), how to load its tokenizer, and how to run the source framework's own model for verification."""

    kind: str
    name: str
    fields: dict
    state_dict: dict[str, torch.Tensor]
    load_tokenizer: Callable[[], object]
    reference: Callable[
        [], Callable
    ]  # () -> fn(input_ids, attention_mask) -> (what, tensor); may raise ReferenceUnavailable
    notes: list[str] = field(default_factory=list)
    added_head: str | None = None  # "identity" or "random" when the converter gave a headless source its head

    @property
    def identity_head(self) -> bool:
        return self.added_head == "identity"

    @property
    def has_head(self) -> bool:
        return any(key.startswith("dense.") for key in self.state_dict)


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def resolve_source(source: str, allow_patterns: list[str] | None = ALLOW_PATTERNS) -> Path:
    """A local folder or file as is; anything else is taken as a Hub repo id and downloaded (cached)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith(".gguf"):
        raise ConversionError(
            f"{source!r} does not exist; expected a checkpoint folder, a .gguf file or a Hub repo id."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=allow_patterns))
    except Exception as error:  # network, auth, missing repo: all end here with the cause attached
        raise ConversionError(
            f"Could not fetch {source!r} from the Hub ({type(error).__name__}: {error}). Check the repo id, your "
            "network and your token (`hf auth login`; gated repos need their terms accepted), or pass a "
            "local folder."
        ) from error


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"Missing file {path}; the source is incomplete.")
    try:
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except (ValueError, OSError) as error:
        raise ConversionError(f"{path} is not valid JSON ({error}); the source is damaged.") from error
    if not isinstance(content, (dict, list)):
        raise ConversionError(f"{path} holds a {type(content).__name__}, not a JSON object; the source is damaged.")
    return content


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, with an error naming the file when it is missing, truncated or corrupt."""
    if not path.is_file():
        raise ConversionError(f"Missing weights file {path}; the source is incomplete (a shard not downloaded?).")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for truncated headers and data
        raise ConversionError(
            f"{path} cannot be read as safetensors ({type(error).__name__}: {error}); the file is truncated or "
            "damaged: download or copy it again."
        ) from error


def require_folder(path: Path, kind: str) -> Path:
    if not path.is_dir():
        raise ConversionError(f"{path} is not a folder; --from {kind} takes a checkpoint folder or a Hub repo id.")
    return path


def source_config(path: Path, kind: str, model_types: tuple[str, ...], hint: str) -> tuple[Path, dict]:
    """(folder, config.json) of a source whose model_type must be one of `model_types`; `hint` points elsewhere."""
    folder = require_folder(path, kind)
    config = read_json(folder / "config.json")
    if config.get("model_type") not in model_types:
        raise ConversionError(
            f"{folder}/config.json has model_type={config.get('model_type')!r}; --from {kind} takes {hint}"
        )
    return folder, config


def refuse_embeddinggemma_folder(folder: Path, config: dict, kind: str) -> None:
    if is_embeddinggemma_config(config):
        raise ConversionError(
            f"{folder} is an EmbeddingGemma folder written by this package (config.json has architectures="
            f"{config.get('architectures')}), not a {kind} checkpoint; convert it with --from embeddinggemma, which "
            "keeps its trained head."
        )


def load_safetensors(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of a sharded `model.safetensors.index.json` in `folder`."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        state_dict = {}
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index} has no weight_map; the source is damaged.")
        for shard in sorted(set(weight_map.values())):
            state_dict.update(read_safetensors(folder / shard))
        return state_dict
    pickled = (
        sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if folder.is_dir()
        else []
    )
    hint = (
        f" It has {pickled}: pickled weights are never loaded here; re-save them as safetensors first."
        if pickled
        else ""
    )
    raise ConversionError(f"No model.safetensors (or sharded index) for the {what} in {folder}.{hint}")


def config_defaults(class_name: str) -> dict:
    """Defaults of a transformers config class (saved configs may omit default values), without the fields whose
    defaults depend on others (layer types) or that RoPE handling reads on its own."""
    import transformers

    try:
        defaults = getattr(transformers, class_name)().to_dict()
    except Exception:  # class missing from this transformers: the saved config must then be complete
        return {}
    for key in (
        "layer_types",
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "rope_local_base_freq",
        "sliding_window_pattern",
        "_sliding_window_pattern",
        "use_bidirectional_attention",
    ):
        defaults.pop(key, None)
    return defaults


ENCODER_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "query_pre_attn_scalar",
    "hidden_activation",
    "max_position_embeddings",
    "rms_norm_eps",
    "layer_types",
    "sliding_window",
    "attention_bias",
    "attention_dropout",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def encoder_fields(config: dict, defaults: dict, default_pattern: int = 6) -> dict:
    """EmbeddingGemmaConfig encoder fields from a Gemma-family text config dict (over the class defaults)."""
    config = {**defaults, **config}
    fields = {key: config[key] for key in ENCODER_KEYS if config.get(key) is not None}
    if "layer_types" not in fields:
        pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", default_pattern))
        fields["sliding_window_pattern"] = pattern
    if isinstance(fields.get("eos_token_id"), list):
        fields["eos_token_id"] = fields["eos_token_id"][0]
    return fields


def rope_fields(config: dict, default_theta: float = 1_000_000.0, default_local: float = 10_000.0) -> dict:
    """RoPE fields from a config, old (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) or new
    (`rope_parameters`, per layer type or one for all) style."""
    params = config.get("rope_parameters") or {}
    if params and "full_attention" not in params and "sliding_attention" not in params:
        params = {"full_attention": params, "sliding_attention": params}  # one RoPE for all layers (T5Gemma v1)
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    scaling = full if full.get("rope_type", "default") != "default" else (config.get("rope_scaling") or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ConversionError(
            f"RoPE scaling {rope_type!r} is not supported; EmbeddingGemma supports none or 'linear' on "
            "full-attention layers."
        )
    if local.get("rope_type", "default") != "default":
        raise ConversionError(f"RoPE scaling on sliding layers ({local}) is not supported.")
    return {
        "rope_theta": full.get("rope_theta", config.get("rope_theta", default_theta)),
        "rope_local_base_freq": local.get("rope_theta", config.get("rope_local_base_freq", default_local)),
        "rope_linear_factor": float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0,
    }


def select_encoder(state_dict, prefixes, drop=(), renames=()) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder's weights as our `model.` keys. Keys under `drop` are dropped; the encoder sits under the first
    of `prefixes` holding `embed_tokens.weight`; `renames` are (old, new) substrings; any other key is kept as is
    and so reported as unexpected."""
    prefix = next((p for p in prefixes if p + "embed_tokens.weight" in state_dict), None)
    if prefix is None:
        sample = sorted(state_dict)[:8]
        raise ConversionError(
            f"Found no encoder weights: expected '<prefix>embed_tokens.weight' with a prefix among {list(prefixes)}; "
            f"the checkpoint's first keys are {sample}. Check that --from names the right kind of source."
        )
    selected = {}
    for key, value in state_dict.items():
        if any(key.startswith(d) for d in drop):
            continue
        if key.startswith(prefix):
            key = key[len(prefix) :]
            for old, new in renames:
                key = key.replace(old, new)
            key = "model." + key
        selected[key] = value
    return selected, prefix


def auto_tokenizer(path, **kwargs) -> Callable[[], object]:
    def load():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path, **kwargs)
        except Exception as error:
            raise ConversionError(f"Could not load the tokenizer of {path}: {error}") from error

    return load


def encoder_reference(build: Callable[[], torch.nn.Module]) -> Callable[[], Callable]:
    """Wraps a builder of the source framework's encoder into the verification interface."""

    def make():
        encoder = build().eval()

        def run(input_ids, attention_mask):
            return "hidden", encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return run

    return make


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Loads `state_dict` strictly (the verification model must hold exactly the source's weights)."""
    module.load_state_dict(state_dict, strict=True)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Source readers
# ----------------------------------------------------------------------------------------------------------------


def module_folder(folder: Path, module: dict) -> Path:
    """The folder of one modules.json entry, which must lie inside `folder`: an absolute path or one that climbs out
    with `..` is refused (a folder from the Hub is untrusted input; it must not make us read elsewhere)."""
    relative = str(module.get("path", ""))
    normal = os.path.normpath(relative) if relative else ""
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise ConversionError(
            f"{folder}/modules.json gives module {module.get('name', module.get('idx'))!r} the path {relative!r}, "
            "outside the folder; a sentence-transformers module's path is a subfolder (e.g. '2_Dense') or ''."
        )
    return folder / normal if normal not in ("", ".") else folder


def read_sentence_transformers(path: Path, name: str, **_) -> Source:
    """google/embeddinggemma-300m's layout: Transformer (Gemma3TextModel) -> Pooling(mean) -> Dense* -> Normalize."""
    folder = require_folder(path, "sentence-transformers")
    modules = read_json(folder / "modules.json")
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    if not kinds or kinds[0] != "Transformer":
        raise ConversionError(
            f"{folder}/modules.json starts with {kinds[:1]}; expected a sentence-transformers Transformer module "
            "first (the google/embeddinggemma-300m layout)."
        )
    transformer_dir = module_folder(folder, modules[0])
    backbone = read_json(transformer_dir / "config.json")
    refuse_embeddinggemma_folder(folder, backbone, "sentence-transformers (google/embeddinggemma-300m layout)")
    if backbone.get("model_type") != "gemma3_text":
        raise ConversionError(
            f"{transformer_dir}/config.json has model_type={backbone.get('model_type')!r} and architectures="
            f"{backbone.get('architectures')}; expected a Gemma 3 text encoder (model_type 'gemma3_text', "
            f"Gemma3TextModel). For a Gemma 3 decoder use --from gemma3; for T5Gemma use --from t5gemma or t5gemma2."
        )
    fields = {**encoder_fields(backbone, config_defaults("Gemma3TextConfig")), **rope_fields(backbone)}

    dense_out_features, dense_bias, dense_activation, head_state, normalize = [], None, None, {}, False
    pooling_mode = "mean"
    for module, kind in zip(modules[1:], kinds[1:]):
        module_dir = module_folder(folder, module)
        if kind == "Pooling":
            pooling = read_json(module_dir / "config.json")
            mode = pooling.get("pooling_mode")  # sentence-transformers >= 5.5 writes a compact string
            if mode is None:
                mode = [k[len("pooling_mode_") :] for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
                mode = mode[0] if len(mode) == 1 else mode
            mode = {
                "mean_tokens": "mean",
                "cls_token": "cls",
                "max_tokens": "max",
                "weightedmean_tokens": "weightedmean",
            }.get(mode[0] if isinstance(mode, list) and len(mode) == 1 else mode, mode)
            if mode not in POOLING_MODES:
                raise ConversionError(
                    f"{module_dir}/config.json pools with {mode!r}; expected one of {POOLING_MODES} (EmbeddingGemma: "
                    "'mean')."
                )
            pooling_mode = mode
            if pooling.get("include_prompt", True) is False:
                raise ConversionError(f"{module_dir}/config.json excludes the prompt; EmbeddingGemma pools it too.")
        elif kind == "Dense":
            dense = read_json(module_dir / "config.json")
            activation = dense.get("activation_function", "torch.nn.modules.activation.Tanh")
            activation = "identity" if activation.endswith("Identity") else activation.rsplit(".", 1)[-1].lower()
            bias = dense.get("bias", True)
            if dense_bias not in (None, bias) or dense_activation not in (None, activation):
                raise ConversionError(f"The Dense layers of {folder} differ in bias or activation; expected one kind.")
            dense_bias, dense_activation = bias, activation
            index = len(dense_out_features)
            for key, tensor in load_safetensors(module_dir, f"Dense module {module_dir.name}").items():
                head_state[f"dense.{index}.{key.removeprefix('linear.')}"] = tensor
            dense_out_features.append(dense["out_features"])
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConversionError(
                f"{folder}/modules.json has a {module['type']} module; expected only Transformer, Pooling, Dense "
                "and Normalize."
            )

    st_config = (
        read_json(folder / "config_sentence_transformers.json")
        if (folder / "config_sentence_transformers.json").is_file()
        else {}
    )
    fields.update(
        pooling_mode=pooling_mode,
        dense_out_features=dense_out_features,
        dense_bias=bool(dense_bias),
        dense_activation=dense_activation or "identity",
        normalize_embeddings=normalize,
        default_prompt_name=st_config.get("default_prompt_name"),
    )
    if st_config.get("prompts"):
        fields["prompts"] = st_config["prompts"]
    if backbone.get("matryoshka_dimensions"):  # vLLM's and SGLang's key, written by --to sentence-transformers
        fields["matryoshka_dims"] = list(backbone["matryoshka_dimensions"])
    encoder, _ = select_encoder(load_safetensors(transformer_dir, "Transformer module"), ("", "model."))
    state_dict = {**encoder, **head_state}

    def reference():
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ReferenceUnavailable(
                "sentence-transformers is not installed (pip install 'embeddinggemma[st]')"
            ) from error
        st = SentenceTransformer(str(folder), device="cpu")

        def run(input_ids, attention_mask):
            out = st.forward({"input_ids": input_ids, "attention_mask": attention_mask})
            return "embedding", out["sentence_embedding"]

        return run

    return Source("sentence-transformers", name, fields, state_dict, auto_tokenizer(transformer_dir), reference)


def read_embeddinggemma(path: Path, name: str, **_) -> Source:
    """A folder written by this converter (or by EmbeddingGemmaModel.save_pretrained)."""
    folder, config = source_config(
        path,
        "embeddinggemma",
        MODEL_TYPES,
        "a folder written by this converter or by EmbeddingGemmaModel.save_pretrained.",
    )
    if not is_embeddinggemma_config(config):
        raise ConversionError(
            f"{folder}/config.json is a plain {config.get('model_type')!r} model, not an EmbeddingGemma folder; for a "
            "Gemma 3 decoder use --from gemma3, for google/embeddinggemma-300m --from sentence-transformers."
        )
    parameters = inspect.signature(EmbeddingGemmaConfig.__init__).parameters
    fields = {key: value for key, value in config.items() if key in parameters and key != "self"}
    state_dict = load_safetensors(folder, "model")

    def reference():  # this package's class, never the source folder's copy of the code
        model = EmbeddingGemmaModel.from_pretrained(folder, dtype=torch.float32).eval()
        return lambda ids, mask: ("embedding", model(input_ids=ids, attention_mask=mask).sentence_embedding)

    # the tokenizer with our config given, so that transformers does not load the folder's config class (its code)
    tokenizer = auto_tokenizer(folder, config=EmbeddingGemmaConfig.from_pretrained(folder))
    return Source("embeddinggemma", name, fields, state_dict, tokenizer, reference)


def read_gemma3(path: Path, name: str, gguf_file: str | None = None, **_) -> Source:
    """A Gemma 3 decoder: Gemma3ForCausalLM (`model.*`), Gemma3ForConditionalGeneration (`model.language_model.*`
    or the older `language_model.model.*`; vision tower and projector dropped) or a bare Gemma3TextModel; safetensors
    or, with a .gguf file, through transformers' GGUF loader (dequantised). Attention becomes bidirectional."""
    if gguf_file or path.suffix == ".gguf":
        return read_gemma3_gguf(path, name, gguf_file)
    folder, config = source_config(
        path,
        "gemma3",
        ("gemma3", "gemma3_text"),
        "a Gemma 3 decoder (model_type 'gemma3' or 'gemma3_text'). For T5Gemma use --from t5gemma or --from t5gemma2.",
    )
    refuse_embeddinggemma_folder(folder, config, "Gemma 3 decoder")
    text_config = config.get("text_config") or {} if config["model_type"] == "gemma3" else config
    fields = {**encoder_fields(text_config, config_defaults("Gemma3TextConfig")), **rope_fields(text_config)}
    weights = load_safetensors(folder, "model")
    drop = (
        "lm_head.",
        "language_model.lm_head.",
        "model.lm_head.",
        "vision_tower.",
        "model.vision_tower.",
        "multi_modal_projector.",
        "model.multi_modal_projector.",
    )
    state_dict, prefix = select_encoder(weights, ("model.language_model.", "language_model.model.", "model.", ""), drop)
    source = Source("gemma3", name, fields, state_dict, auto_tokenizer(folder), gemma3_reference(fields, state_dict))
    source.notes.append(f"encoder weights from '{prefix}*'; dropped the LM head and any vision tower/projector")
    return source


def read_gemma3_gguf(path: Path, name: str, gguf_file: str | None) -> Source:
    if gguf_file:
        folder, file_name = path, gguf_file
    else:
        folder, file_name = path.parent, path.name
    file_path = folder / file_name
    if not file_path.is_file():
        raise ConversionError(f"GGUF file {file_path} does not exist.")
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ConversionError("Reading GGUF needs the gguf package: pip install 'embeddinggemma[gguf]'.") from error
    try:
        reader = GGUFReader(file_path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except Exception as error:
        raise ConversionError(f"{file_path} is not a readable GGUF file ({error}).") from error
    if architecture != "gemma3":
        hint = (
            " EmbeddingGemma's own GGUF ('gemma-embedding') is not readable by transformers; convert "
            "google/embeddinggemma-300m with --from sentence-transformers instead."
            if architecture == "gemma-embedding"
            else ""
        )
        raise ConversionError(
            f"{file_path} holds a {architecture!r} model; --from gemma3 takes a Gemma 3 decoder GGUF "
            f"(general.architecture 'gemma3').{hint}"
        )
    import transformers
    from transformers import AutoModelForCausalLM

    if int(transformers.__version__.split(".")[0]) < 5:
        raise ConversionError(
            f"Converting a GGUF needs transformers >= 5 (tested: 5.24): transformers {transformers.__version__} "
            "rebuilds the Gemma 3 tokenizer from GGUF with other token ids than Gemma's own, which would silently "
            "degrade the embeddings. Upgrade transformers, or convert the safetensors checkpoint instead."
        )
    decoder = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    text_config = decoder.config.to_dict()
    fields = {**encoder_fields(text_config, {}), **rope_fields(text_config)}
    state_dict, _ = select_encoder(decoder.state_dict(), ("model.",), ("lm_head.",))
    del decoder
    source = Source(
        "gemma3",
        name,
        fields,
        state_dict,
        auto_tokenizer(folder, gguf_file=file_name),
        gemma3_reference(fields, state_dict),
    )
    source.notes.append(f"dequantised from {file_name} by transformers' GGUF loader; LM head dropped")
    return source


def gemma3_reference(fields: dict, state_dict: dict) -> Callable[[], Callable]:
    """transformers' own Gemma3TextModel with use_bidirectional_attention=True, holding the same weights."""

    def build():
        from transformers import Gemma3TextConfig, Gemma3TextModel

        config = {k: v for k, v in fields.items() if k not in ("rope_linear_factor",)}
        if fields.get("rope_linear_factor", 1.0) != 1.0:
            config["rope_scaling"] = {"rope_type": "linear", "factor": fields["rope_linear_factor"]}
        model = Gemma3TextModel(
            Gemma3TextConfig(**config, use_bidirectional_attention=True, attn_implementation="eager")
        )
        encoder = {k.removeprefix("model."): v.float() for k, v in state_dict.items() if k.startswith("model.")}
        return load_into(model, encoder)

    return encoder_reference(build)


def read_t5gemma(path: Path, name: str, **_) -> Source:
    """The encoder of a T5Gemma (v1) checkpoint: Gemma 2 blocks (no QK-norm, softcapped attention logits, one RoPE
    base, alternating sliding/full layers with |i - j| <= sliding_window). Decoder and LM head dropped."""
    folder, config = source_config(
        path,
        "t5gemma",
        ("t5gemma",),
        "a T5Gemma (v1) checkpoint (model_type 't5gemma'). For T5Gemma 2 use --from t5gemma2.",
    )
    encoder_config = config.get("encoder") or {}
    defaults = config_defaults("T5GemmaModuleConfig")
    merged = {**defaults, **encoder_config}
    rope = rope_fields(encoder_config, default_theta=10_000.0, default_local=10_000.0)
    fields = {
        **encoder_fields(encoder_config, defaults, default_pattern=2),
        **rope,
        "use_qk_norm": False,
        "attn_logit_softcapping": merged.get("attn_logit_softcapping"),
        "sliding_window_convention": "t5gemma",
    }
    weights = load_safetensors(folder, "model")
    if any(".self_attn.q_norm." in key for key in weights):
        raise ConversionError(
            f"{folder} has q_norm weights, which T5Gemma v1 encoders (Gemma 2 blocks) do not: this looks like a "
            "T5Gemma 2 checkpoint. Use --from t5gemma2."
        )
    renames = (
        (".pre_self_attn_layernorm.", ".input_layernorm."),
        (".post_self_attn_layernorm.", ".post_attention_layernorm."),
    )
    state_dict, _ = select_encoder(
        weights, ("model.encoder.", "encoder."), ("model.decoder.", "decoder.", "lm_head."), renames
    )

    def build():
        from transformers import T5GemmaModuleConfig
        from transformers.models.t5gemma import modeling_t5gemma
        from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

        if not hasattr(modeling_t5gemma, "create_bidirectional_sliding_window_mask"):
            raise ReferenceUnavailable(
                "this transformers (< 5) builds T5Gemma's encoder window one token narrower (|i - j| < window) than "
                "current releases (|i - j| <= window), which the conversion follows; verify with transformers >= 5"
            )

        module_config = T5GemmaModuleConfig(**{**encoder_config, "is_decoder": False}, attn_implementation="eager")
        source_keys = {}
        for key, value in state_dict.items():
            if not key.startswith("model."):
                continue  # the head added by the converter
            key = key.removeprefix("model.")
            for old, new in renames:
                key = key.replace(new, old)
            source_keys[key] = value.float()
        return load_into(T5GemmaEncoder(module_config), source_keys)

    source = Source("t5gemma", name, fields, state_dict, auto_tokenizer(folder), encoder_reference(build))
    source.notes.append("renamed pre/post_self_attn_layernorm to input/post_attention_layernorm; dropped the decoder")
    return source


def read_t5gemma2(path: Path, name: str, **_) -> Source:
    """The text encoder of a T5Gemma 2 checkpoint (Gemma 3 blocks). The learned `eoi_embedding` is folded into the
    embedding table; vision tower, projector, decoder and LM head are dropped; its window is kept exactly
    (one token narrower on the left than EmbeddingGemma's)."""
    folder, config = source_config(
        path,
        "t5gemma2",
        ("t5gemma2",),
        "a T5Gemma 2 checkpoint (model_type 't5gemma2'). For T5Gemma v1 use --from t5gemma.",
    )
    encoder_config = config.get("encoder") or {}
    text_config = encoder_config.get("text_config") or {}
    eoi_index = encoder_config.get("eoi_token_index", config.get("eoi_token_index", 256_000))
    fields = {
        **encoder_fields(text_config, config_defaults("T5Gemma2TextConfig")),
        **rope_fields(text_config),
        "sliding_window_convention": "t5gemma2",
    }
    weights = load_safetensors(folder, "model")
    drop = (
        "model.decoder.",
        "decoder.",
        "lm_head.",
        "model.encoder.vision_tower.",
        "model.encoder.multi_modal_projector.",
        "encoder.vision_tower.",
        "encoder.multi_modal_projector.",
    )
    prefixes = ("model.encoder.text_model.", "model.encoder.", "encoder.text_model.", "encoder.")
    renames = (
        (".pre_self_attn_layernorm.", ".input_layernorm."),
        (".post_self_attn_layernorm.", ".post_attention_layernorm."),
    )
    state_dict, _ = select_encoder(weights, prefixes, drop, renames)
    eoi_embedding = state_dict.pop("model.embed_tokens.eoi_embedding", None)
    original = {k: v for k, v in state_dict.items()}
    if eoi_embedding is not None:
        original["model.embed_tokens.eoi_embedding"] = eoi_embedding
        table = state_dict["model.embed_tokens.weight"].clone()
        if 0 <= eoi_index < table.shape[0]:
            # T5Gemma 2 replaces the *scaled* embedding of this token with eoi_embedding; we scale every row,
            # so store eoi_embedding / scale (the scale rounded to the table's dtype, as both models do).
            scale = torch.tensor(fields["hidden_size"] ** 0.5, dtype=table.dtype)
            table[eoi_index] = (eoi_embedding.to(torch.float64) / scale.to(torch.float64)).to(table.dtype)
        state_dict["model.embed_tokens.weight"] = table

    def build():
        try:
            from transformers import T5Gemma2TextConfig
            from transformers.models.t5gemma2.modeling_t5gemma2 import T5Gemma2TextEncoder
        except ImportError as error:
            raise ReferenceUnavailable("this transformers has no T5Gemma 2 (it arrived in transformers 5)") from error

        encoder = T5Gemma2TextEncoder(
            T5Gemma2TextConfig(**text_config, attn_implementation="eager"), eoi_token_index=eoi_index
        )
        source_keys = {}
        for key, value in original.items():
            key = key.removeprefix("model.")
            for old, new in renames:
                key = key.replace(new, old)
            source_keys[key] = value.float()
        return load_into(encoder, source_keys)

    source = Source("t5gemma2", name, fields, state_dict, auto_tokenizer(folder), encoder_reference(build))
    source.notes.append(
        f"folded eoi_embedding into row {eoi_index} of the embedding table; dropped vision tower, projector, decoder"
    )
    return source


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
    modes = {
        "cls": "cls_token",
        "mean": "mean_tokens",
        "max": "max_tokens",
        "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
        "weightedmean": "weightedmean_tokens",
        "lasttoken": "lasttoken",
    }
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        **{f"pooling_mode_{name}": mode == config.pooling_mode for mode, name in modes.items()},
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


def public_name(source: str) -> str:
    """How the model card names a source: a Hub id as is, a local path never (a card may be published)."""
    if Path(source).expanduser().exists() or "/" not in source or source.startswith((".", "/", "~")):
        return "a local checkpoint"
    return f"`{source}`"


def write_model_card(
    folder: Path,
    config: EmbeddingGemmaConfig,
    source: Source,
    export: Export,
    name: str,
    figures: dict[str, dict],
    base_model: str | None,
) -> None:
    """README.md: Hub front matter (library, tags for each integration), the files of each variant with how to use
    them (transformers, sentence-transformers, ONNX Runtime, Transformers.js, llama.cpp), and the parity figures
    measured at conversion. `name` is the Hub repo id or the output folder's name."""
    targets = export.targets
    library = "sentence-transformers" if "sentence-transformers" in targets else "transformers"
    if export.base is None:
        library = "transformers.js" if "onnx" in targets else "gguf"  # as onnx-community / GGUF repos declare
    tags = ["embeddinggemma", "sentence-similarity", "feature-extraction", "text-embeddings", "matryoshka"]
    if "sentence-transformers" in targets:
        tags += ["sentence-transformers", "text-embeddings-inference"]
    if "onnx" in targets:
        tags += ["onnx", "transformers.js"]
    if "gguf" in targets:
        tags += ["gguf", "llama.cpp"]
    meta = ["---", f"library_name: {library}", "pipeline_tag: sentence-similarity", "license: gemma", "tags:"]
    meta += [f"- {tag}" for tag in tags]
    if base_model:
        meta += ["base_model:", f"- {base_model}"]
    meta.append("---")
    sections = [model_card_usage(name, target, config, export, figures.get(target)) for target in targets]
    head = (
        ""
        if not source.added_head
        else (
            "\n**This encoder's embedding head is freshly initialised: fine-tune it before use** "
            "(see the training recipe of the embeddinggemma package).\n"
        )
    )
    files = "\n".join(f"| `{file}` | {what} |" for file, what in model_card_files(export))
    body = f"""
# {name}

An EmbeddingGemma-architecture text embedding model: bidirectional Gemma 3 encoder ({config.num_hidden_layers}
layers, hidden {config.hidden_size}) -> mean pooling -> Dense {" -> ".join(map(str, config.dense_out_features))}
-> L2 normalisation, {config.embedding_dim}-d embeddings, Matryoshka dims {config.matryoshka_dims}.
Converted from {public_name(source.name)} (`--from {source.kind}`) by the embeddinggemma package's
`convert_checkpoint.py` (`--to {",".join(targets)}`).
{head}
## Files

| file | what it is |
|---|---|
{files}

Prompts: `task: search result | query: ` for queries, `title: {{title | none}} | text: ` for documents; the full
table is in `config_sentence_transformers.json`. Runtimes other than sentence-transformers and this model's own
`encode` do not add them: prepend them yourself. Use float32 or bfloat16: float16 overflows.

{chr(10).join(sections)}
## Conversion notes

{chr(10).join(f"- {note}" for note in source.notes) or "- renamed only"}
"""
    (folder / "README.md").write_text("\n".join(meta) + "\n" + body)


def model_card_files(export: Export) -> list[tuple[str, str]]:
    targets, options = export.targets, export.options
    files = []
    if "embeddinggemma" in targets:
        files += [
            ("config.json", "the model's config (transformers reads it as Gemma 3 where it can)"),
            ("model.safetensors", "the encoder and the Dense head, float32 or bfloat16"),
            ("*_embeddinggemma.py", "the model's code (`trust_remote_code=True`)"),
        ]
    if "sentence-transformers" in targets or ("onnx" in targets and export.base is None):
        files += [
            ("config.json", "Gemma 3 encoder config (`Gemma3TextModel`, bidirectional)"),
            ("modules.json, 1_Pooling/, 2_Dense/, 3_Dense/", "sentence-transformers' pooling and Dense head"),
        ]
    if "sentence-transformers" in targets:
        files.append(("model.safetensors", "the encoder's weights"))
    files.append(("tokenizer.json, tokenizer_config.json", "the tokenizer (adds `<bos>` and `<eos>`)"))
    if "onnx" in targets:
        files += [
            (
                f"onnx/{ONNX_FILE}",
                "ONNX, float32: inputs `input_ids`, `attention_mask`; outputs `last_hidden_state`, "
                "`sentence_embedding` (pooled, Dense head, normalised)",
            ),
            (f"onnx/{ONNX_INT8_FILE}", "ONNX, int8 weights (onnxruntime dynamic quantization), same inputs/outputs"),
        ]
    if "gguf" in targets:
        files += [
            (
                gguf_file_name(options.name, t),
                f"GGUF {t} for llama.cpp / Ollama (`gemma-embedding`, Dense head included)",
            )
            for t in options.gguf_types
        ]
    return files


def _parity(figures: dict | None) -> str:
    if not figures:
        return "Not verified at conversion."
    if figures.get("verified") is False:
        return f"Not verified at conversion: {figures['reason']}."
    if "compared" in figures:
        return (
            f"Verified at conversion against the source framework's own model ({figures['compared']}, "
            f"{figures['texts']} texts, {figures['tokens']} tokens, longest {figures['longest']}): minimum cosine "
            f"{figures['min_cosine']}, maximum absolute difference {figures['max_abs_diff']:.3g} in "
            f"{figures['dtype']}."
        )
    lines = []
    for key, value in figures.items():
        if key == "verified":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
        lines.append(f"- `{key}`: {value}" if "." in key or "=" in key else f"- {key.replace('_', ' ')}: {value}")
    return "Verified at conversion against the float32 model:\n\n" + "\n".join(lines)


def model_card_usage(name: str, target: str, config: EmbeddingGemmaConfig, export: Export, figures) -> str:
    """One variant's usage section of the model card; the Python blocks run as they are (tests run them)."""
    query = "task: search result | query: Which planet is known as the Red Planet?"
    documents = [
        "title: none | text: Mars is often referred to as the Red Planet.",
        "title: none | text: Venus is Earth's twin.",
    ]
    parity = _parity(figures)
    if target == "sentence-transformers":
        return f"""## sentence-transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{name}")
query = model.encode_query("Which planet is known as the Red Planet?")
documents = model.encode_document(["Mars is often referred to as the Red Planet.", "Venus is Earth's twin."])
print(model.similarity(query, documents))
```

{parity}
"""
    if target == "embeddinggemma":
        return f"""## transformers

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{name}", trust_remote_code=True)
query = model.encode_query("Which planet is known as the Red Planet?")
documents = model.encode_document(["Mars is often referred to as the Red Planet.", "Venus is Earth's twin."])
print(documents @ query)  # cosine similarities; truncate_dim={config.matryoshka_dims[-1]} for a small index
```

Also `SentenceTransformer("{name}", trust_remote_code=True)` (sentence-transformers >= 5.5) and
`pipeline("sentence-embeddings", model="{name}", trust_remote_code=True)`.

{parity}
"""
    if target == "onnx":
        st_backend = ""
        if st_onnx_backend_applies(export, config):
            st_backend = f"""
sentence-transformers (with `pip install optimum-onnx`) runs the same file:
`SentenceTransformer("{name}", backend="onnx", model_kwargs={{"file_name": "onnx/{ONNX_FILE}"}})`.
"""
        return f"""## ONNX Runtime

Read the `sentence_embedding` output: it is pooled, passed through the Dense head and normalised.
`last_hidden_state` alone (mean-pooled, as some pipelines do) skips the head and gives other vectors.

```python
import numpy as np
import onnxruntime
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

folder = snapshot_download("{name}")
tokenizer = AutoTokenizer.from_pretrained(folder)
session = onnxruntime.InferenceSession(f"{{folder}}/onnx/{ONNX_FILE}")  # or onnx/{ONNX_INT8_FILE} (int8)
texts = {json.dumps([query, *documents], indent=4)}
batch = tokenizer(texts, padding=True, return_tensors="np")
feeds = {{name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}}
(embeddings,) = session.run(["sentence_embedding"], feeds)
print(embeddings[1:] @ embeddings[0])  # cosine similarities of the documents to the query
```
{st_backend}
Transformers.js (`dtype: "q8"` loads `onnx/{ONNX_INT8_FILE}`):

```js
import {{ AutoModel, AutoTokenizer }} from "@huggingface/transformers";

const tokenizer = await AutoTokenizer.from_pretrained("{name}");
const model = await AutoModel.from_pretrained("{name}", {{ dtype: "fp32" }});
const inputs = await tokenizer({json.dumps([query, *documents])}, {{ padding: true }});
const {{ sentence_embedding }} = await model(inputs);
```

{parity}
"""
    file = gguf_file_name(export.options.name, export.options.gguf_types[-1])
    return f"""## llama.cpp and Ollama (GGUF)

llama.cpp returns the Dense head's output **unnormalised**: L2-normalise each vector before comparing (cosine).
It adds no prompts: prepend them.

```bash
llama-embedding -m {file} --pooling mean --embd-normalize 2 \\
    -p "{query}"
```

```python
import numpy as np
from huggingface_hub import hf_hub_download
from llama_cpp import Llama

llm = Llama(model_path=hf_hub_download("{name}", "{file}"), embedding=True, verbose=False)
texts = {json.dumps([query, *documents], indent=4)}
embeddings = np.array(llm.embed(texts))
embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)  # llama.cpp does not normalise
print(embeddings[1:] @ embeddings[0])
```

Ollama: `ollama create NAME -f Modelfile` with `FROM ./{file}` in the Modelfile, then `POST /api/embed`; normalise
the vectors if your client does not.

{parity}
"""


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Uploads `folder` to the Hub repo `repo_id` (created if needed) with huggingface_hub; the token comes from the
    usual places (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id, operations=operations, commit_message="Upload EmbeddingGemma model converted by embeddinggemma"
        )
    except Exception as error:
        raise ConversionError(
            f"Uploading to {repo_id!r} failed ({type(error).__name__}: {error}). The converted folder is complete in "
            f"{folder}; fix the token or repo id and upload it with `hf upload {repo_id} {folder}`."
        ) from error
    return getattr(commit, "commit_url", str(commit))


# ----------------------------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------------------------


def check_not_a_link(output_dir: Path) -> None:
    """An OUTPUT_DIR that is a symbolic link is refused: --overwrite would replace whatever it points to, which may
    lie anywhere."""
    if output_dir.is_symlink():
        raise ConversionError(
            f"{output_dir} is a symbolic link (to {os.readlink(output_dir)}); the converter writes only real folders, "
            "so that --overwrite never replaces something elsewhere. Give the folder itself as OUTPUT_DIR."
        )


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuses an output that is a file, a non-empty folder without --overwrite, or a place that cannot be written
    (read-only, no permission): before anything is read or downloaded."""
    check_not_a_link(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is not a folder; choose another OUTPUT_DIR.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir.parent):
            pass
    except OSError as error:
        raise ConversionError(
            f"Cannot write beside {output_dir} ({error}); choose an OUTPUT_DIR you can write."
        ) from error


def check_free_space(output_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(output_dir.parent).free
    if free < needed:
        raise ConversionError(
            f"Not enough free space for {output_dir}: about {needed / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB free. Free some space or choose another OUTPUT_DIR."
        )


OWNER_FILE = ".embeddinggemma-writer.json"  # in a temporary folder while it is written: who writes it


def remove_stale_temporary_folders(output_dir: Path) -> list[Path]:
    """Temporary folders of earlier conversions to the same output whose writer is gone (killed with SIGKILL, or its
    machine restarted): they hold a whole model's weights. Folders of a writer still running are left alone."""
    removed = []
    for candidate in output_dir.parent.glob(f".{output_dir.name}.*-*"):
        owner = candidate / OWNER_FILE
        if not candidate.is_dir() or not owner.is_file():
            continue
        try:
            writer = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if writer.get("host") == socket.gethostname() and not process_alive(writer.get("pid")):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


class _Terminated(BaseException):
    """SIGTERM during a conversion: unwinds like Ctrl-C, so the temporary folder is removed."""


def write_atomically(output_dir: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp_dir)` on a fresh folder beside `output_dir`, then moves it into place. On any error, Ctrl-C or
    SIGTERM the temporary folder is removed and `output_dir` is left as it was; one left by a SIGKILLed run is removed
    by the next run (see `remove_stale_temporary_folders`). Files get the usual permissions (umask), not 0600."""
    check_output_dir(output_dir, overwrite)
    remove_stale_temporary_folders(output_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = None

    def terminate(signum, frame):
        raise _Terminated()

    try:
        if in_main_thread:
            previous = signal.signal(signal.SIGTERM, terminate)
        (tmp_dir / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        write(tmp_dir)
        (tmp_dir / OWNER_FILE).unlink()
        apply_umask(tmp_dir)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    except OSError as error:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise ConversionError(f"Writing {output_dir} failed ({error}); nothing was written.") from error
    except _Terminated:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def apply_umask(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask, as a plain write would give (tempfile and some writers use 0600)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


# ----------------------------------------------------------------------------------------------------------------
# What converts from and to: each source kind's reader, each target's writer and verification
# ----------------------------------------------------------------------------------------------------------------

READERS = {
    "sentence-transformers": read_sentence_transformers,
    "embeddinggemma": read_embeddinggemma,
    "gemma3": read_gemma3,
    "t5gemma": read_t5gemma,
    "t5gemma2": read_t5gemma2,
}
SOURCES = tuple(READERS)


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


def convert(
    source: str,
    output_dir: str | os.PathLike,
    source_kind: str = "sentence-transformers",
    *,
    to: str | list[str] = "embeddinggemma",
    dtype: str = "float32",
    overwrite: bool = False,
    matryoshka_dims: list[int] | None = None,
    gguf_file: str | None = None,
    head_init: str | None = None,
    embedding_dim: int | None = None,
    gguf_types: list[str] | str | None = None,
    verify_texts: list[str] | None = None,
    verify_output: bool = True,
    push_to_hub: str | None = None,
    private: bool = False,
    base_model: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Converts `source` (folder, Hub id or .gguf file) of kind `source_kind` into `output_dir` in the `to` format(s)
    (one folder layout and/or the onnx and gguf variants, written together), verifies each, optionally uploads the
    folder, and returns the output path. Raises ConversionError on bad input, with nothing written."""
    if source_kind not in READERS:
        raise ConversionError(f"--from {source_kind!r} is not supported; expected one of {SOURCES}.")
    targets = parse_targets(to)
    if dtype not in DTYPES:
        raise ConversionError(
            f"--dtype {dtype!r} is not supported; expected one of {tuple(DTYPES)} (float16 "
            "overflows in EmbeddingGemma)."
        )
    if isinstance(gguf_types, str):
        gguf_types = gguf_types.split(",")
    gguf_types = [t.strip().lower() for t in gguf_types if t.strip()] if gguf_types else None
    if gguf_types and "gguf" not in targets:
        raise ConversionError("--gguf-type applies to --to gguf; add gguf to --to.")
    if gguf_types and set(gguf_types) - set(GGUF_TYPES):
        raise ConversionError(f"--gguf-type {','.join(gguf_types)} is not supported; expected some of {GGUF_TYPES}.")
    check_not_a_link(Path(output_dir).expanduser())
    output_dir = Path(output_dir).expanduser().resolve()
    check_output_dir(output_dir, overwrite)  # fail before downloading or reading anything
    options = ExportOptions(name=(push_to_hub or output_dir.name).split("/")[-1], gguf_types=gguf_types or ["f32"])
    if verify_texts is not None:
        if not verify_texts:
            raise ConversionError("--verify-texts gave no texts; give a file with one text per line.")
        options.quality_texts = list(verify_texts)
    export = Export(targets, options)
    try:
        if "onnx" in targets:
            check_onnx_tools()
            if dtype != "float32":
                raise ExportError(
                    "--to onnx writes a float32 graph and its int8 variant; --dtype bfloat16 is not offered for ONNX "
                    "(onnxruntime's CPU kernels have little bfloat16). Drop --dtype."
                )
        if "gguf" in targets and dtype != "float32":
            raise ExportError(
                "--to gguf takes its types from --gguf-type (f32, f16, bf16, q8_0), converted from float32 weights; "
                "drop --dtype."
            )
    except ExportError as error:
        raise ConversionError(str(error)) from error

    path = resolve_source(source)
    trained_head = sentence_transformers_dense_modules(path)
    if trained_head and source_kind != "sentence-transformers" and head_init is None:
        raise ConversionError(
            f"{source} has a trained embedding head (modules.json lists Dense modules {trained_head}); --from "
            f"{source_kind} would drop it and give the encoder a new, untrained head. Convert it with --from "
            "sentence-transformers to keep the head, or pass --head-init identity|random to replace it on purpose."
        )
    src = READERS[source_kind](path, name=source, gguf_file=gguf_file)
    if src.has_head and embedding_dim is not None and source_kind != "embeddinggemma":
        raise ConversionError(f"--embedding-dim applies to sources without a head; {source!r} has one.")
    if not src.has_head:
        add_head(src, head_init or "identity", embedding_dim)
    if matryoshka_dims:
        src.fields["matryoshka_dims"] = list(matryoshka_dims)
    model = build_model(src.fields, src.state_dict, DTYPES[dtype])
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_free_space(output_dir, required_space(targets, weight_bytes, options.gguf_types))
    tokenizer = prepare_tokenizer(src.load_tokenizer(), model.config.max_position_embeddings)
    try:
        if "gguf" in targets:  # before anything is written: what llama.cpp cannot run as this model is refused
            check_gguf_exportable(model, options.gguf_types)
            gguf_vocab(tokenizer, model.config.vocab_size)
        if "onnx" in targets:
            require_float32(model, "ONNX")
    except ExportError as error:
        raise ConversionError(str(error)) from error
    log(
        f"read {source} (--from {source_kind}): {model.config.num_hidden_layers} layers, hidden "
        f"{model.config.hidden_size}, embedding dim {model.config.embedding_dim}"
    )
    figures: dict[str, dict] = {}

    def write(tmp_dir: Path) -> None:
        try:
            for name in targets:
                log(f"writing {name}")
                TARGETS[name].write(tmp_dir, model, tokenizer, export)
                if verify_output:
                    figures[name] = TARGETS[name].verify(tmp_dir, src, model, tokenizer, export)
                    log(f"verification of {name}: {figures[name]}")
        except ExportError as error:
            raise ConversionError(str(error)) from error
        write_model_card(tmp_dir, model.config, src, export, push_to_hub or output_dir.name, figures, base_model)

    write_atomically(output_dir, overwrite, write)
    if push_to_hub:
        log(f"uploaded: {push_folder(output_dir, push_to_hub, private)}")
    return output_dir


def read_verify_texts(path: str) -> list[str]:
    """--verify-texts FILE: one text per line (UTF-8), blank lines skipped."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"--verify-texts {path}: cannot read it ({error}); give a UTF-8 text file.") from error
    return [line for line in lines if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_kind", required=True, choices=SOURCES, help="kind of source")
    parser.add_argument("source", help="source folder, Hub repo id, or (gemma3) .gguf file")
    parser.add_argument("output_dir", help="folder to write (must be empty or absent unless --overwrite)")
    parser.add_argument(
        "--to",
        default="embeddinggemma",
        metavar="TARGET[,TARGET]",
        help=f"what to write, comma-separated, into one folder: one layout (embeddinggemma or sentence-transformers) "
        f"and/or the variants onnx (onnx/model.onnx + onnx/model_quantized.onnx) and gguf; one of {tuple(TARGETS)} "
        "each (default embeddinggemma)",
    )
    parser.add_argument(
        "--gguf-type",
        metavar="TYPE[,TYPE]",
        help=f"with --to gguf: the GGUF files to write, some of {GGUF_TYPES} (default f32)",
    )
    parser.add_argument(
        "--verify-texts",
        metavar="FILE",
        help="texts (one a line) on which the int8 ONNX and q8_0 GGUF variants are checked (default: built-in)",
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weight dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    parser.add_argument("--gguf-file", help="with --from gemma3: the .gguf file inside SOURCE (a folder or Hub id)")
    parser.add_argument(
        "--head-init",
        default=None,
        choices=HEAD_INITS,
        help="head of a source without one: identity (W2 W1 = I) or random (default identity)",
    )
    parser.add_argument("--embedding-dim", type=int, help="output dim of a new head (default: the hidden size)")
    parser.add_argument(
        "--matryoshka-dims",
        type=lambda s: [int(d) for d in s.split(",")],
        metavar="D1,D2,...",
        help="dims the embedding may be truncated to (default: 768,512,256,128, those that fit)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip comparing the output with the source framework's own model",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--base-model", help="Hub id for the model card's base_model (default: SOURCE if a Hub id)")
    args = parser.parse_args(argv)
    base_model = args.base_model or (args.source if not Path(args.source).expanduser().exists() else None)
    try:
        verify_texts = read_verify_texts(args.verify_texts) if args.verify_texts else None
        output = convert(
            args.source,
            args.output_dir,
            args.source_kind,
            to=args.to,
            dtype=args.dtype,
            overwrite=args.overwrite,
            matryoshka_dims=args.matryoshka_dims,
            gguf_file=args.gguf_file,
            head_init=args.head_init,
            embedding_dim=args.embedding_dim,
            gguf_types=args.gguf_type,
            verify_texts=verify_texts,
            verify_output=args.verify,
            push_to_hub=args.push_to_hub,
            private=args.private,
            base_model=base_model,
            log=print,
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uses = [TARGETS[name].loads_with.format(path=str(output)) for name in parse_targets(args.to)]
    print(f"Wrote {output}. Load it with " + "; or ".join(uses) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
