# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Reading a source: files (safetensors only, nothing unpickled), configs, and one reader per `--from` kind
(`READERS`), each returning a `Source`."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from configuration_embeddinggemma import (
    MODEL_TYPES,
    POOLING_FLAGS,
    POOLING_MODES,
    EmbeddingGemmaConfig,
    is_embeddinggemma_config,
)
from embeddinggemma_tools.convert.common import ALLOW_PATTERNS, ConversionError, ReferenceUnavailable, Source
from modeling_embeddinggemma import EmbeddingGemmaModel


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
            modes = {flag: mode for mode, flag in POOLING_FLAGS.items()}
            mode = modes.get(mode[0] if isinstance(mode, list) and len(mode) == 1 else mode, mode)
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
