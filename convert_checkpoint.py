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
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from embeddinggemma_tools.convert.build import (
    add_head,
    build_model,
    prepare_tokenizer,
    sentence_transformers_dense_modules,
)
from embeddinggemma_tools.convert.card import write_model_card
from embeddinggemma_tools.convert.common import DTYPES, HEAD_INITS, ConversionError
from embeddinggemma_tools.convert.export import (
    GGUF_TYPES,
    ExportError,
    ExportOptions,
    check_gguf_exportable,
    check_onnx_tools,
    gguf_vocab,
    require_float32,
)
from embeddinggemma_tools.convert.hub import push_folder
from embeddinggemma_tools.convert.sources import READERS, SOURCES, resolve_source
from embeddinggemma_tools.convert.targets import (  # noqa: F401  (re-exported)
    TARGETS,
    Export,
    Target,
    parse_targets,
    required_space,
    verification_texts,
)
from embeddinggemma_tools.files import write_folder_atomically


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


def write_atomically(output_dir: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """`output_dir` checked (`check_output_dir`), then written through a temporary folder beside it
    (`embeddinggemma_tools.files.write_folder_atomically`): complete, or not at all."""
    check_output_dir(output_dir, overwrite)
    write_folder_atomically(output_dir, write, error=ConversionError)


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
