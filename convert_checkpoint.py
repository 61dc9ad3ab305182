# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Convert checkpoints into one self-contained EmbeddingGemma folder (config, safetensors, tokenizer, code).

    python convert_checkpoint.py --from sentence-transformers google/embeddinggemma-300m ./embeddinggemma-300m

SOURCE is a local folder or a Hub id. The output is written to a temporary folder next to OUTPUT_DIR and moved
into place only when complete; a non-empty OUTPUT_DIR is refused unless --overwrite is given. Weights are read
from safetensors only (nothing is unpickled).

The result loads with `AutoModel.from_pretrained(OUTPUT_DIR, trust_remote_code=True)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from configuration_embeddinggemma import EmbeddingGemmaConfig
from modeling_embeddinggemma import EmbeddingGemmaModel


SOURCES = ("sentence-transformers",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Files fetched for a Hub id in the sentence-transformers layout.
ST_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*/config.json", "*/*.safetensors"]


class ConversionError(ValueError):
    """A source that cannot be converted; the message says what was wrong and how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# Reading sources
# ----------------------------------------------------------------------------------------------------------------


def resolve_source(source: str, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; anything else is taken as a Hub repo id and downloaded (cached) with huggingface_hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{source!r} is a file; expected a checkpoint folder or a Hub repo id.")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ConversionError(f"{source!r} does not exist; expected a checkpoint folder or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=allow_patterns))
    except Exception as error:  # network, auth, missing repo: all end here with the cause attached
        raise ConversionError(
            f"Could not fetch {source!r} from the Hub ({type(error).__name__}: {error}). Check the repo id, your "
            "network and your token (`huggingface-cli login`; gated repos need their terms accepted), or pass a "
            "local folder."
        ) from error


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"Missing file {path}; the source is incomplete.")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def load_safetensors(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of a sharded `model.safetensors.index.json` in `folder`."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(folder / shard))
        return state_dict
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    hint = (
        f" It has {pickled}: pickled weights are never loaded here; re-save them as safetensors first."
        if pickled
        else ""
    )
    raise ConversionError(f"No model.safetensors (or sharded index) for the {what} in {folder}.{hint}")


def rope_from_gemma3_config(config: dict) -> dict:
    """RoPE fields from a Gemma 3 text config, old (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) or new
    (`rope_parameters` per layer type) style."""
    params = config.get("rope_parameters") or {}
    full = params.get("full_attention", {}) if "full_attention" in params else {}
    local = params.get("sliding_attention", {}) if "sliding_attention" in params else {}
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
        "rope_theta": full.get("rope_theta", config.get("rope_theta", 1_000_000.0)),
        "rope_local_base_freq": local.get("rope_theta", config.get("rope_local_base_freq", 10_000.0)),
        "rope_linear_factor": float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0,
    }


def encoder_config_from_gemma3(config: dict) -> dict:
    """EmbeddingGemmaConfig encoder fields from a `gemma3_text` config dict."""
    keys = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "hidden_activation", "max_position_embeddings",
        "rms_norm_eps", "layer_types", "sliding_window", "attention_bias", "attention_dropout",
        "attn_logit_softcapping", "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id",
    )  # fmt: skip
    fields = {key: config[key] for key in keys if config.get(key) is not None}
    if "layer_types" not in fields and "sliding_window_pattern" in config:
        fields["sliding_window_pattern"] = config["sliding_window_pattern"]
    elif "layer_types" not in fields and "_sliding_window_pattern" in config:
        fields["sliding_window_pattern"] = config["_sliding_window_pattern"]
    if isinstance(fields.get("eos_token_id"), list):
        fields["eos_token_id"] = fields["eos_token_id"][0]
    fields.update(rope_from_gemma3_config(config))
    return fields


def strip_prefix(state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Removes the first matching prefix from each key (keys without one are kept as they are)."""
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def read_sentence_transformers(folder: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """Reads the google/embeddinggemma-300m layout: Transformer (Gemma3TextModel) -> Pooling(mean) ->
    Dense* -> Normalize. Returns (config fields, our state dict, tokenizer folder)."""
    modules = read_json(folder / "modules.json")
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    if not kinds or kinds[0] != "Transformer":
        raise ConversionError(
            f"{folder}/modules.json starts with {kinds[:1]}; expected a sentence-transformers Transformer module "
            "first (the google/embeddinggemma-300m layout)."
        )
    transformer_dir = folder / modules[0].get("path", "")
    backbone = read_json(transformer_dir / "config.json")
    architectures = backbone.get("architectures") or []
    if backbone.get("model_type") != "gemma3_text":
        raise ConversionError(
            f"{transformer_dir}/config.json has model_type={backbone.get('model_type')!r} and architectures="
            f"{architectures}; expected a Gemma 3 text encoder (model_type 'gemma3_text', Gemma3TextModel). For a "
            "Gemma 3 decoder use --from gemma3; for T5Gemma use --from t5gemma or t5gemma2."
        )
    fields = encoder_config_from_gemma3(backbone)

    # Head: Pooling, Dense layers, Normalize, in modules.json order.
    dense_out_features, dense_bias, dense_activation, head_state = [], None, None, {}
    normalize = False
    for module, kind in zip(modules[1:], kinds[1:]):
        module_dir = folder / module.get("path", "")
        if kind == "Pooling":
            pooling = read_json(module_dir / "config.json")
            mode = pooling.get("pooling_mode")  # sentence-transformers >= 5.4 writes a compact string
            if mode is None:
                mode = [k[len("pooling_mode_") :] for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
                mode = mode[0] if len(mode) == 1 else mode
            if mode not in ("mean", "mean_tokens", ["mean"]):
                raise ConversionError(f"{module_dir}/config.json pools with {mode!r}; EmbeddingGemma pools 'mean'.")
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
            weights = load_safetensors(module_dir, f"Dense module {module_dir.name}")
            index = len(dense_out_features)
            for name, tensor in weights.items():
                head_state[f"dense.{index}.{name.removeprefix('linear.')}"] = tensor
            dense_out_features.append(dense["out_features"])
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConversionError(
                f"{folder}/modules.json has a {module['type']} module; expected only Transformer, Pooling, Dense "
                "and Normalize."
            )

    st_config = {}
    if (folder / "config_sentence_transformers.json").is_file():
        st_config = read_json(folder / "config_sentence_transformers.json")
    fields.update(
        dense_out_features=dense_out_features,
        dense_bias=bool(dense_bias),
        dense_activation=dense_activation or "identity",
        normalize_embeddings=normalize,
        default_prompt_name=st_config.get("default_prompt_name"),
    )
    if st_config.get("prompts"):
        fields["prompts"] = st_config["prompts"]
    if backbone.get("matryoshka_dimensions"):  # vLLM's and SGLang's key, written by our --to sentence-transformers
        fields["matryoshka_dims"] = list(backbone["matryoshka_dimensions"])

    encoder_state = strip_prefix(load_safetensors(transformer_dir, "Transformer module"), ("model.",))
    state_dict = {f"model.{key}": value for key, value in encoder_state.items()}
    state_dict.update(head_state)
    return fields, state_dict, transformer_dir


# ----------------------------------------------------------------------------------------------------------------
# Building and writing
# ----------------------------------------------------------------------------------------------------------------


def default_matryoshka_dims(embedding_dim: int) -> list[int]:
    """EmbeddingGemma's dims (768, 512, 256, 128) that fit, led by the full dim."""
    return [embedding_dim] + [d for d in (512, 256, 128) if d < embedding_dim]


def build_model(fields: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> EmbeddingGemmaModel:
    """Our model holding exactly `state_dict`; every missing, unexpected and mis-shaped key is reported at once."""
    if not fields.get("matryoshka_dims"):
        dense = fields.get("dense_out_features")
        fields["matryoshka_dims"] = default_matryoshka_dims(dense[-1] if dense else fields["hidden_size"])
    try:
        config = EmbeddingGemmaConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"The source's configuration is not a valid EmbeddingGemma configuration: {error}")
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


def prepare_tokenizer(tokenizer_dir: Path, max_length: int):
    """The source's tokenizer, set up as EmbeddingGemma's: `<bos> text <eos>`, right padding."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as error:
        raise ConversionError(f"Could not load the tokenizer in {tokenizer_dir}: {error}") from error
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = max_length
    ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        # Gemma LLM tokenizers add <bos> only; EmbeddingGemma was trained with <eos> too (typesense/typesense#3038).
        tokenizer.add_bos_token, tokenizer.add_eos_token = True, True
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()
        ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        raise ConversionError(
            f"The tokenizer in {tokenizer_dir} does not wrap texts in <bos> ... <eos> (got {ids} for 'a') and could "
            "not be set to; EmbeddingGemma needs both."
        )
    return tokenizer


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is not a folder; choose another OUTPUT_DIR.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")


def write_atomically(output_dir: Path, overwrite: bool, write) -> None:
    """Calls `write(tmp_dir)` on a fresh folder beside `output_dir`, then moves it into place. On any error the
    temporary folder is removed and `output_dir` is left as it was."""
    check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        write(tmp_dir)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def convert(source: str, output_dir: str | os.PathLike, source_kind: str = "sentence-transformers",
            dtype: str = "float32", overwrite: bool = False,
            matryoshka_dims: list[int] | None = None) -> Path:  # fmt: skip
    """Converts `source` (folder or Hub id) into `output_dir`; returns the output path. `matryoshka_dims`
    overrides the dims the embedding may be truncated to (default: those of 768/512/256/128 that fit)."""
    if source_kind not in SOURCES:
        raise ConversionError(f"--from {source_kind!r} is not supported; expected one of {SOURCES}.")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not supported; expected one of {tuple(DTYPES)} (float16 "
                              "overflows in EmbeddingGemma).")  # fmt: skip
    output_dir = Path(output_dir).expanduser().resolve()
    check_output_dir(output_dir, overwrite)  # fail before downloading or reading anything

    folder = resolve_source(source, ST_ALLOW_PATTERNS)
    fields, state_dict, tokenizer_dir = read_sentence_transformers(folder)
    if matryoshka_dims:
        fields["matryoshka_dims"] = list(matryoshka_dims)
    model = build_model(fields, state_dict, DTYPES[dtype])
    tokenizer = prepare_tokenizer(tokenizer_dir, model.config.max_position_embeddings)

    def write(tmp_dir: Path) -> None:
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)

    write_atomically(output_dir, overwrite, write)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_kind", required=True, choices=SOURCES, help="kind of source")
    parser.add_argument("source", help="source folder or Hub repo id")
    parser.add_argument("output_dir", help="folder to write (must be empty or absent unless --overwrite)")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weight dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    parser.add_argument(
        "--matryoshka-dims", type=lambda s: [int(d) for d in s.split(",")], metavar="D1,D2,...",
        help="dims the embedding may be truncated to (default: 768,512,256,128, those that fit)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        output = convert(args.source, args.output_dir, args.source_kind, args.dtype, args.overwrite,
                         args.matryoshka_dims)  # fmt: skip
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {output}. Load it with AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
