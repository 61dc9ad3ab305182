# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Embed a corpus into Parquet shards, resumably and exactly once, locally or on a Ray cluster (Ray Data).

    python embed_corpus.py --model MODEL_DIR --input docs.jsonl --output embeddings/ [--local]
        [--id-column id] [--text-column text] [--title-column title] [--prompt-name document]
        [--num-workers N] [--batch-size B] [--truncate-dim D] [--precision float32|bfloat16]
        [--shard-rows R] [--on-bad-rows fail|skip] [--address ADDR]

How it works:
1. Staging (driver): the input (jsonl, parquet or csv) is read in a stream and checked row by row. Good rows are
   split, in input order, into shards of --shard-rows rows written to OUTPUT/_staging/. Bad rows (missing id,
   text that is not a string, an id seen before) fail the job with their positions (--on-bad-rows fail, the
   default) or go to OUTPUT/_rejects.jsonl with their position and reason (--on-bad-rows skip); never silently.
2. A manifest (OUTPUT/_manifest.json) records the input's checksum, the model's fingerprint (every byte of its
   config, tokenizer, code and weights) and every setting that changes the output. A re-run with a different input,
   model or setting is refused instead of mixing outputs. One run at a time holds OUTPUT (OUTPUT/_lock); a second
   run stops with a clear message, and a lock left by a killed run is taken over.
3. Embedding: each pending shard goes to a worker holding the model (a Ray Data `map_batches` actor pool, or a loop
   with --local), which embeds it with `model.encode` (token-length-sorted batches) and commits
   OUTPUT/part-NNNNN.parquet atomically (temporary file, then rename). A job killed at any point and re-run with the
   same arguments skips the committed shards and redoes the rest: every id appears exactly once.

The output holds `id` and `embedding` (float32, or float32 values rounded to bfloat16 with --precision bfloat16)
with the model and settings in each file's metadata; `pyarrow.parquet.read_table(OUTPUT)` reads it all (files
starting with "_" or "." are ignored). On a cluster, OUTPUT must be a filesystem every worker can write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from configuration_embeddinggemma import EmbeddingGemmaConfig, is_embeddinggemma_config
from embeddinggemma_tools.files import (
    OutputLock,
    file_sha256,
    fingerprint_folder,
    process_alive,
    process_start_time,
    write_json_atomically,
)


MANIFEST = "_manifest.json"
MODEL_FINGERPRINTS = "_model_fingerprints.json"
STAGING = "_staging"
REJECTS = "_rejects.jsonl"
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Test hook: "N" raises in the worker after committing N shards; "N:kill" SIGKILLs the process after N shards;
# "N:kill-in-write" SIGKILLs it after writing shard N+1's temporary file but before committing it.
FAULT_ENV = "EMBEDDINGGEMMA_FAULT_AFTER_SHARDS"


class CorpusError(ValueError):
    """Bad input or a refused resume; the message says what and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Everything that changes the output; a resume must match it exactly."""

    id_column: str = "id"
    text_column: str = "text"
    title_column: str | None = None
    prompt_name: str | None = "document"
    truncate_dim: int | None = None
    precision: str = "float32"
    shard_rows: int = 1000
    on_bad_rows: str = "fail"


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints and manifest
# ----------------------------------------------------------------------------------------------------------------


def resolve_model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as error:
        raise CorpusError(f"--model {model!r} is neither a folder nor a reachable Hub repo ({error}).") from error


def read_manifest(output: Path) -> dict | None:
    path = output / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def check_resume(manifest: dict, expected: dict) -> None:
    """Refuses to continue a job whose input, model or settings differ from the ones that produced OUTPUT."""
    differences = []
    for section in ("input", "model", "settings"):
        for key in sorted(set(manifest[section]) | set(expected[section])):
            if manifest[section].get(key) != expected[section].get(key):
                differences.append(
                    f"{section}.{key}: was {manifest[section].get(key)!r}, now {expected[section].get(key)!r}"
                )
    if differences:
        raise CorpusError(
            "OUTPUT was written by a job with a different input, model or settings; refusing to mix outputs:\n  "
            + "\n  ".join(differences)
            + "\nRe-run with the original arguments to resume, or choose a new --output."
        )


# ----------------------------------------------------------------------------------------------------------------
# Staging: read, check, shard
# ----------------------------------------------------------------------------------------------------------------


def input_columns(path: Path, columns: list[str], chunk_rows: int = 10_000):
    """Streams the input as chunks of {column: list of values}. JSON lines are parsed line by line, so a value of
    the wrong type is reported as a bad row rather than failing the whole file."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(f"--input {path} has an unknown extension; expected one of {sorted(FORMATS)}.")
    if kind == "json":
        chunk, seen_columns = [], set()
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise CorpusError(
                        f"--input {path} line {number} is not UTF-8 ({error}); convert the file to UTF-8 first."
                    ) from error
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"--input {path} line {number} is not valid JSON ({error}).") from error
                if not isinstance(record, dict):
                    raise CorpusError(f"--input {path} line {number} is not a JSON object.")
                seen_columns.update(record)
                chunk.append(record)
                if len(chunk) == chunk_rows:
                    yield sorted(seen_columns), {c: [r.get(c) for r in chunk] for c in columns if c}
                    chunk = []
        if chunk or not seen_columns:
            yield sorted(seen_columns), {c: [r.get(c) for r in chunk] for c in columns if c}
        return
    import pyarrow.csv
    import pyarrow.dataset as ds

    file_format = kind
    if kind == "csv":  # ids, texts and titles as written: "001" stays "001", a text "42" stays a text
        types = {c: pa.string() for c in columns if c}
        file_format = ds.CsvFileFormat(convert_options=pyarrow.csv.ConvertOptions(column_types=types))
    try:
        dataset = ds.dataset(path, format=file_format)
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusError(f"--input {path} cannot be read as {kind} ({error}).") from error
    names = dataset.schema.names
    present = [c for c in columns if c and c in names]
    try:
        for batch in dataset.to_batches(columns=present):
            yield names, {c: batch.column(c).to_pylist() for c in present}
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise CorpusError(f"--input {path} cannot be read as {kind} ({error}).") from error


def stage(input_path: Path, output: Path, settings: Settings) -> dict:
    """Checks every row and writes the good ones, in order, as shards to OUTPUT/_staging. Returns counts."""
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rejects_path = output / REJECTS
    rejects_path.unlink(missing_ok=True)
    seen, rejected, buffer, shards, position, id_type = set(), [], [], 0, 0, None
    columns_checked = False

    def flush():
        nonlocal shards, buffer
        if buffer:
            table = pa.Table.from_pylist(buffer)
            pq.write_table(table, staging / f".shard-{shards:05d}.tmp")
            os.replace(staging / f".shard-{shards:05d}.tmp", staging / f"shard-{shards:05d}.parquet")
            shards, buffer = shards + 1, []

    needed = [c for c in (settings.id_column, settings.text_column, settings.title_column) if c]
    for names, chunk in input_columns(input_path, needed):
        if not columns_checked:
            missing = [c for c in needed if c not in names]
            if missing:
                raise CorpusError(
                    f"--input {input_path} has no column(s) {missing}; its columns are {names}. Set "
                    "--id-column / --text-column / --title-column."
                )
            columns_checked = True
        ids, texts = chunk[settings.id_column], chunk[settings.text_column]
        titles = chunk[settings.title_column] if settings.title_column else [None] * len(ids)
        for row_id, text, title in zip(ids, texts, titles):
            reason = None
            if row_id is None:
                reason = "missing id"
            elif isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
                reason = f"id is {type(row_id).__name__}; expected a string or an integer"
            elif isinstance(row_id, int) and not -(2**63) <= row_id < 2**63:
                reason = "id does not fit a 64-bit integer; write it as a string"
            elif id_type is not None and type(row_id) is not id_type:
                reason = f"id is {type(row_id).__name__}, but earlier ids are {id_type.__name__}"
            elif not isinstance(text, str):
                reason = f"text is {type(text).__name__}, not a string"
            elif title is not None and not isinstance(title, str):
                reason = f"title is {type(title).__name__}, not a string"
            elif row_id in seen:
                reason = "duplicate id (its first occurrence is kept)"
            if reason:
                rejected.append({"position": position, "id": row_id, "reason": reason})
            else:
                seen.add(row_id)
                id_type = type(row_id)
                buffer.append({"position": position, "id": row_id, "text": text, "title": title})
                if len(buffer) == settings.shard_rows:
                    flush()
            position += 1
    flush()
    if rejected and settings.on_bad_rows == "fail":
        shown = "\n  ".join(f"row {r['position']} (id {r['id']!r}): {r['reason']}" for r in rejected[:20])
        more = f"\n  ... and {len(rejected) - 20} more" if len(rejected) > 20 else ""
        shutil.rmtree(staging, ignore_errors=True)
        raise CorpusError(
            f"{len(rejected)} bad row(s) in {input_path} (rows counted from 0):\n  {shown}{more}\n"
            "Fix them, or pass --on-bad-rows skip to embed the rest and list these in OUTPUT/_rejects.jsonl."
        )
    if rejected:
        with open(rejects_path, "w", encoding="utf-8") as handle:
            for row in rejected:
                handle.write(json.dumps(row, default=str) + "\n")
    return {
        "rows": position,
        "embedded_rows": position - len(rejected),
        "rejected_rows": len(rejected),
        "shards": shards,
    }


# ----------------------------------------------------------------------------------------------------------------
# Embedding shards
# ----------------------------------------------------------------------------------------------------------------


def part_path(output: Path, shard: int) -> Path:
    return output / f"part-{shard:05d}.parquet"


class ShardEmbedder:
    """Holds the model; embeds whole staged shards and commits each as one Parquet file. The same class runs in
    the local loop and as a Ray Data actor (`__call__` takes a batch of shard numbers)."""

    def __init__(
        self,
        model_dir: str,
        output: str,
        settings: dict,
        metadata: dict,
        batch_size: int = 32,
        threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(model_dir, trust_remote_code)
        self.output = Path(output)
        self.settings = Settings(**settings)
        self.metadata = {b"embeddinggemma": json.dumps(metadata, sort_keys=True).encode()}
        self.batch_size = batch_size
        self.committed = 0
        fault = os.environ.get(FAULT_ENV, "")
        self.fault_after, _, self.fault_mode = fault.partition(":")

    def embed_shard(self, shard: int) -> int:
        import numpy as np
        import torch

        table = pq.read_table(self.output / STAGING / f"shard-{shard:05d}.parquet")
        texts, titles = table.column("text").to_pylist(), table.column("title").to_pylist()
        settings = self.settings
        kwargs = {"batch_size": self.batch_size, "truncate_dim": settings.truncate_dim, "show_progress_bar": False}
        if settings.title_column and settings.prompt_name == "document":
            vectors = self.model.encode_document(texts, titles=titles, **kwargs)
        else:
            vectors = self.model.encode(texts, prompt_name=settings.prompt_name, **kwargs)
        if settings.precision == "bfloat16":
            vectors = torch.from_numpy(vectors).to(torch.bfloat16).float().numpy()
        dim = vectors.shape[1]
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(vectors).reshape(-1), pa.float32()), dim
        )
        result = pa.table({"id": table.column("id"), "embedding": embedding}).replace_schema_metadata(self.metadata)
        tmp = self.output / f".part-{shard:05d}.tmp"
        pq.write_table(result, tmp)
        self._maybe_fault(in_write=True)
        os.replace(tmp, part_path(self.output, shard))  # the commit: a shard is either complete or absent
        self.committed += 1
        self._maybe_fault(in_write=False)
        return len(result)

    def _maybe_fault(self, in_write: bool) -> None:
        if not self.fault_after or self.committed < int(self.fault_after):
            return
        if in_write and self.fault_mode == "kill-in-write" or not in_write and self.fault_mode == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if not in_write and not self.fault_mode:
            raise RuntimeError(f"{FAULT_ENV}: failing after {self.committed} shards, as asked")

    def __call__(self, batch: dict) -> dict:
        rows = [self.embed_shard(int(shard)) for shard in batch["shard"]]
        return {"shard": batch["shard"], "rows": rows}


def load_model(model_dir: str, trust_remote_code: bool = False):
    """This package's EmbeddingGemmaModel for its own folders (never the folder's copy of the code); another
    model's own code only with trust_remote_code, as transformers asks."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if is_embeddinggemma_config(config):
        from modeling_embeddinggemma import EmbeddingGemmaModel

        return EmbeddingGemmaModel.from_pretrained(model_dir).eval()
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code).eval()


def run_local(
    pending: list[int],
    model_dir: Path,
    output: Path,
    settings: Settings,
    metadata: dict,
    batch_size: int,
    trust_remote_code: bool,
) -> int:
    from tqdm.auto import tqdm

    embedder = ShardEmbedder(
        str(model_dir), str(output), asdict(settings), metadata, batch_size, trust_remote_code=trust_remote_code
    )
    return sum(embedder.embed_shard(shard) for shard in tqdm(pending, desc="Shards", unit="shard"))


RAY_HELPERS = ".ray-helpers.json"  # in the output folder while a run's embedded Ray is up: its processes


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree (Linux /proc; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def record_ray_helpers(output: Path) -> None:
    """Writes the embedded Ray's processes (this driver's descendants) beside the output: Ray's dashboard and
    runtime-env agents outlive a driver killed with SIGKILL (they are re-parented to init), and the next run uses this
    record to end them."""
    helpers = [{"pid": pid, "start": process_start_time(pid)} for pid in descendants(os.getpid())]
    record = {"host": socket.gethostname(), "driver": os.getpid(), "start": process_start_time(os.getpid())}
    write_json_atomically(output / RAY_HELPERS, {**record, "helpers": helpers})


def end_ray_leftovers(output: Path) -> list[int]:
    """Ends the Ray helper processes that a killed earlier run on this output left behind (only those it recorded,
    still with the same start time, on this host, whose driver is gone), and returns their pids."""
    import signal

    path = output / RAY_HELPERS
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    driver_alive = process_alive(record.get("driver")) and process_start_time(record["driver"]) == record.get("start")
    if record.get("host") != socket.gethostname() or driver_alive:
        return []
    ended = []
    for helper in record.get("helpers") or []:
        pid = helper.get("pid")
        if isinstance(pid, int) and pid > 0 and process_start_time(pid) == helper.get("start") is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                ended.append(pid)
            except OSError:
                pass
    deadline = time.monotonic() + 5
    while any(process_start_time(pid) for pid in ended) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in ended:
        if process_start_time(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    path.unlink(missing_ok=True)
    if ended:
        print(f"ended {len(ended)} Ray helper processes left by a killed earlier run (pids {ended})", file=sys.stderr)
    return ended


def run_ray(
    pending: list[int],
    model_dir: Path,
    output: Path,
    settings: Settings,
    metadata: dict,
    batch_size: int,
    num_workers: int,
    address: str | None,
    trust_remote_code: bool,
) -> int:
    try:
        import ray
    except ImportError as error:
        raise CorpusError("Ray is not installed: pip install 'embeddinggemma[ray]', or pass --local.") from error
    started_here = not ray.is_initialized()
    if started_here:
        end_ray_leftovers(output)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        if address is None:  # an embedded Ray: its processes are ours to end
            record_ray_helpers(output)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = max(1, cpus // num_workers)
        dataset = ray.data.from_items([{"shard": shard} for shard in pending])
        results = dataset.map_batches(
            ShardEmbedder,
            fn_constructor_args=(
                str(model_dir),
                str(output),
                asdict(settings),
                metadata,
                batch_size,
                threads,
                trust_remote_code,
            ),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=threads,
        )
        return int(sum(row["rows"] for row in results.iter_rows()))
    finally:
        if started_here:
            ray.shutdown()
            (output / RAY_HELPERS).unlink(missing_ok=True)


def embed_corpus(
    model: str,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    local: bool = False,
    num_workers: int = 1,
    batch_size: int = 32,
    address: str | None = None,
    trust_remote_code: bool = False,
    log=print,
    **settings,
) -> dict:
    """Embeds `input_path` into `output` (see the module docstring). `settings` are `Settings` fields. Returns a
    summary; raises CorpusError on bad input or a refused resume."""
    settings = Settings(**settings)
    if settings.on_bad_rows not in ("fail", "skip"):
        raise CorpusError(f"--on-bad-rows {settings.on_bad_rows!r} is not supported; expected 'fail' or 'skip'.")
    if settings.precision not in ("float32", "bfloat16"):
        raise CorpusError(f"--precision {settings.precision!r} is not supported; expected 'float32' or 'bfloat16'.")
    if settings.shard_rows < 1 or batch_size < 1 or num_workers < 1:
        raise CorpusError("--shard-rows, --batch-size and --num-workers must be positive.")
    input_path, output = Path(input_path).expanduser().resolve(), Path(output).expanduser().resolve()
    if not input_path.is_file():
        raise CorpusError(f"--input {input_path} does not exist.")
    if output.exists() and not output.is_dir():
        raise CorpusError(f"--output {output} is a file; give a folder (new, or one this job wrote before).")
    model_dir = resolve_model_dir(model)
    config = read_model_config(model_dir, trust_remote_code)
    if settings.truncate_dim is not None and settings.truncate_dim not in config.matryoshka_dims:
        raise CorpusError(
            f"--truncate-dim {settings.truncate_dim} is not one of the model's Matryoshka dims "
            f"{config.matryoshka_dims}."
        )
    try:
        prompt = config.prompt_for(settings.prompt_name) if settings.prompt_name else ""
    except ValueError as error:
        raise CorpusError(f"--prompt-name: {error} Use 'none' for no prompt.") from error
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CorpusError(f"--output {output} cannot be created ({error}).") from error
    with OutputLock(output, error=CorpusError):
        return _embed_locked(
            input_path,
            output,
            model,
            model_dir,
            settings,
            prompt,
            local,
            num_workers,
            batch_size,
            address,
            trust_remote_code,
            log,
        )


def read_model_config(model_dir: Path, trust_remote_code: bool):
    """The model's config, read with this package's class for its own folders; another model's config class only
    with --trust-remote-code."""
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CorpusError(f"--model {model_dir} has no readable config.json ({error}).") from error
    if is_embeddinggemma_config(raw):
        return EmbeddingGemmaConfig.from_pretrained(model_dir)
    if not trust_remote_code:
        raise CorpusError(
            f"--model {model_dir} is not an EmbeddingGemma folder written by this package (architectures "
            f"{raw.get('architectures')}); running its own code needs --trust-remote-code. Or convert it first with "
            "embeddinggemma-convert."
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, trust_remote_code=True)


def _embed_locked(
    input_path,
    output,
    model,
    model_dir,
    settings,
    prompt,
    local,
    num_workers,
    batch_size,
    address,
    trust_remote_code,
    log,
) -> dict:
    """`embed_corpus` once it holds OUTPUT's lock: stage or resume, embed what is pending, check the result."""
    expected = {  # compared on resume; paths are informational (a moved file with the same content may resume)
        "input": {"sha256": file_sha256(input_path)},
        "model": {"fingerprint": fingerprint_folder(model_dir, cache=output / MODEL_FINGERPRINTS)},
        "settings": {**asdict(settings), "prompt": prompt},
    }
    manifest = read_manifest(output)
    if manifest is None:
        if any(output.glob("part-*.parquet")):
            raise CorpusError(
                f"{output} holds part files but no {MANIFEST}; it was not written by this job. Choose a new --output."
            )
        log(f"staging {input_path} ...")
        counts = stage(input_path, output, settings)
        manifest = {**expected, "counts": counts, "paths": {"input": str(input_path), "model": str(model_dir)}}
        write_json_atomically(output / MANIFEST, manifest)
    else:
        check_resume(manifest, expected)
    for stale in output.glob(".part-*.tmp"):
        stale.unlink()  # a shard being written when the last run died: it is redone below

    counts = manifest["counts"]
    pending = [k for k in range(counts["shards"]) if not part_path(output, k).is_file()]
    log(
        f"{counts['embedded_rows']} rows in {counts['shards']} shards ({counts['rejected_rows']} rejected); "
        f"{counts['shards'] - len(pending)} already done, {len(pending)} to embed"
    )
    metadata = {"model": {**expected["model"], "name": model}, "settings": expected["settings"]}
    started = time.perf_counter()
    if pending:
        if local:
            rows = run_local(pending, model_dir, output, settings, metadata, batch_size, trust_remote_code)
        else:
            rows = run_ray(
                pending, model_dir, output, settings, metadata, batch_size, num_workers, address, trust_remote_code
            )
    else:
        rows = 0
    seconds = time.perf_counter() - started
    missing = [k for k in range(counts["shards"]) if not part_path(output, k).is_file()]
    if missing:
        raise CorpusError(f"Shards {missing[:10]} were not written; re-run the same command to finish them.")
    check_complete(output, counts)
    summary = {**counts, "embedded_now": rows, "seconds": round(seconds, 2), "output": str(output)}
    log(f"done: {summary}")
    return summary


def check_complete(output: Path, counts: dict) -> None:
    """The finished output holds exactly the manifest's shards and rows: no part file of another job, no extra row."""
    expected = {part_path(output, k).name for k in range(counts["shards"])}
    found = {p.name for p in output.glob("part-*.parquet")}
    rows = sum(pq.ParquetFile(output / name).metadata.num_rows for name in found & expected)
    if found != expected or rows != counts["embedded_rows"]:
        raise CorpusError(
            f"{output} does not hold what its manifest says: {len(found)} part files for {len(expected)} shards "
            f"(unexpected: {sorted(found - expected)[:5]}), {rows} rows for {counts['embedded_rows']}. Another job "
            "wrote into it; embed into a new --output."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted model folder (or Hub id)")
    parser.add_argument("--input", required=True, help="corpus file: .jsonl, .parquet or .csv")
    parser.add_argument("--output", required=True, help="output folder of Parquet shards")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--title-column", help="optional title column, used in the document prompt")
    parser.add_argument("--prompt-name", default="document", help="prompt name (default document; 'none' for none)")
    parser.add_argument("--truncate-dim", type=int, help="Matryoshka dim to keep")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="stored values: float32, or float32 rounded to bfloat16",
    )
    parser.add_argument("--shard-rows", type=int, default=1000, help="rows per output shard (default 1000)")
    parser.add_argument("--on-bad-rows", default="fail", choices=("fail", "skip"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1, help="Ray actors holding a model each")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--local", action="store_true", help="run in this process, without Ray")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the code of a --model that this package did not write (its own folders need none)",
    )
    args = parser.parse_args(argv)
    try:
        embed_corpus(
            args.model,
            args.input,
            args.output,
            local=args.local,
            num_workers=args.num_workers,
            batch_size=args.batch_size,
            address=args.address,
            trust_remote_code=args.trust_remote_code,
            id_column=args.id_column,
            text_column=args.text_column,
            title_column=args.title_column,
            prompt_name=None if args.prompt_name == "none" else args.prompt_name,
            truncate_dim=args.truncate_dim,
            precision=args.precision,
            shard_rows=args.shard_rows,
            on_bad_rows=args.on_bad_rows,
        )
    except CorpusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
