# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's training recipe on sentence-transformers: NCE with in-batch and hard negatives, a spread-out
regulariser and embedding-matching distillation, all at every Matryoshka dim; then model souping and STS evaluation.

    python train_embeddinggemma.py train MODEL_DIR OUTPUT_DIR --data sick:../shared/data/sick/SICK_train.txt \\
        --data stsb:../shared/data/stsbenchmark/sts-train.csv --teacher TEACHER_DIR [--max-steps 200 | --max-minutes 60]
        [--data texts:FILE --nce-weight 0 --gor-weight 0] [--fit-head] [--held-out FILE] [--eval-sts-file FILE]
    python train_embeddinggemma.py soup OUTPUT_DIR CHECKPOINT [CHECKPOINT ...] [--weights 0.5,0.5]
    python train_embeddinggemma.py evaluate MODEL_DIR --sts-file ../shared/data/stsbenchmark/sts-test.csv \
        [--sick-file ../shared/data/sick/SICK_test_annotated.txt] [--prompt-name STS]
    python train_embeddinggemma.py check-held-out OUTPUT_DIR [...] --held-out FILE [--held-out FILE]

Every loss is sentence-transformers' own, composed here (arXiv 2509.20354, section 3):
- NCE: `MultipleNegativesRankingLoss(hardness_mode="hard_negatives", hardness_strength=5)`, negatives gathered
  across processes under torchrun / accelerate launch (`gather_across_devices=True`);
- spread-out: `GlobalOrthogonalRegularizationLoss(mean_weight=0, aggregation="sum")`;
- distillation: `EmbedDistillLoss("l2")` to teacher embeddings computed once and cached on disk;
- Matryoshka: `MatryoshkaLoss` over the model's `matryoshka_dims` wraps the sum.
MODEL_DIR is a folder of ours (`convert_checkpoint.py`, any `--from`); the result is written in the same format.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------------
# Data: rows of {"anchor", "positive"[, "negative"]}
# ----------------------------------------------------------------------------------------------------------------


def read_sick(path: str | os.PathLike) -> list[dict]:
    """SICK: each ENTAILMENT pair is an (anchor, positive); a CONTRADICTION partner of the same anchor, when there
    is one, becomes its hard negative."""
    entail, contradict = [], {}
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            a, b, label = row["sentence_A"], row["sentence_B"], row["entailment_judgment"]
            if label == "ENTAILMENT":
                entail.append((a, b))
            elif label == "CONTRADICTION":
                contradict.setdefault(a, b)
                contradict.setdefault(b, a)
    rows = []
    for a, b in entail:
        row = {"anchor": a, "positive": b}
        if a in contradict:
            row["negative"] = contradict[a]
        rows.append(row)
    return rows


def is_sick(path: str | os.PathLike) -> bool:
    """SICK files start with a `pair_ID<TAB>sentence_A<TAB>sentence_B...` header; STS-B files have none."""
    with open(path, encoding="utf-8") as handle:
        return handle.readline().startswith("pair_ID\tsentence_A\tsentence_B")


def read_sts(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """Scored pairs (sentence1, sentence2, score) of an STS benchmark file (genre, file, year, id, score, sentence1,
    sentence2; tab-separated, unquoted) or of a SICK file (its relatedness_score), told apart by SICK's header."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        if is_sick(path):
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                pairs.append((row["sentence_A"], row["sentence_B"], float(row["relatedness_score"])))
            return pairs
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6], float(row[4])))
    return pairs


def read_texts(path: str | os.PathLike) -> list[dict]:
    """Every distinct sentence of an STS-B or SICK file, each on its own, as {"anchor": text} rows (for
    distillation: the teacher's embedding is the target, no pair is needed)."""
    texts = dict.fromkeys(text for a, b, _ in read_sts(path) for text in (a, b))
    return [{"anchor": text} for text in texts]


def text_key(text: str) -> str:
    """Texts compared after Unicode compatibility normalisation (NFKC: composed accents, full-width letters,
    ligatures), case folding, with runs of whitespace as one space and punctuation at either end removed, so that a
    held-out sentence is caught however it is cased, spaced, encoded or punctuated. Idempotent: a key is its own key."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = " ".join(text.split())
    start, end = 0, len(text)
    while start < end and (unicodedata.category(text[start])[0] == "P" or text[start].isspace()):
        start += 1
    while end > start and (unicodedata.category(text[end - 1])[0] == "P" or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


def held_out_texts(paths: list[str | os.PathLike]) -> set[str]:
    """The `text_key`s of every text of these evaluation sets: STS-B or SICK files (both sentences of each pair),
    and retrieval folders in BEIR's layout (every query and document: experiments/build_retrieval_sets.py's man
    pages and Python standard library)."""
    keys = set()
    for path in paths:
        if Path(path).is_dir():
            from embeddinggemma_tools.retrieval import read_retrieval_set

            dataset = read_retrieval_set(path)
            texts = [*dataset.queries.values(), *(text for _, text in dataset.corpus.values())]
        else:
            texts = [text for a, b, _ in read_sts(path) for text in (a, b)]
        keys |= {text_key(text) for text in texts}
    return keys


def drop_held_out(rows: list[dict], held_out: set[str]) -> tuple[list[dict], int]:
    """Rows none of whose texts is held out, and how many were dropped."""
    kept = [row for row in rows if not any(text_key(row[c]) in held_out for c in TEXT_COLUMNS if c in row)]
    return kept, len(rows) - len(kept)


def trained_texts(rows: list[dict]) -> list[str]:
    """The distinct `text_key`s of every text in these rows, sorted."""
    return sorted({text_key(row[c]) for row in rows for c in TEXT_COLUMNS if c in row})


def read_stsb_positives(path: str | os.PathLike, min_score: float = 4.0) -> list[dict]:
    """STS-B train: pairs scored >= `min_score` (of 5) as (anchor, positive)."""
    return [{"anchor": a, "positive": b} for a, b, score in read_sts(path) if score >= min_score]


def read_rows(path: str | os.PathLike) -> list[dict]:
    """(anchor, positive[, negative]) rows from .jsonl, .csv or .parquet; a file whose rows are all anchors alone gives
    single texts (for distillation, as `texts:`)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path} has an unknown extension; expected .jsonl, .csv or .parquet (or sick:/stsb:).")
    singles = bool(rows) and all(isinstance(row, dict) and set(row) == {"anchor"} for row in rows)
    for position, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("anchor"), str)
            or not (singles or isinstance(row.get("positive"), str))
        ):
            raise ValueError(
                f"{path} row {position} needs string 'anchor' and 'positive' columns (or every row an 'anchor' "
                f"alone: single texts); got {row}."
            )
    return [{k: row[k] for k in ("anchor", "positive", "negative") if row.get(k)} for row in rows]


DATA_KINDS = {"sick": read_sick, "stsb": read_stsb_positives, "texts": read_texts}
TEXT_COLUMNS = ("anchor", "positive", "negative")


def load_data(specs: list[str]) -> list[dict]:
    """`sick:PATH`, `stsb:PATH`, `texts:PATH` or a plain file path, concatenated."""
    rows = []
    for spec in specs:
        kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in DATA_KINDS else ("file", "", spec)
        rows += DATA_KINDS[kind](path) if kind in DATA_KINDS else read_rows(path)
    return rows


def split_by_columns(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows with a hard negative, pairs and single texts, as separate datasets (a dataset needs the same columns in
    every row)."""
    groups = {
        "triplets": [r for r in rows if "negative" in r],
        "pairs": [r for r in rows if "positive" in r and "negative" not in r],
        "texts": [r for r in rows if "positive" not in r],
    }
    return {name: group for name, group in groups.items() if group}


class LengthGroupedBatchSampler:
    """Batches of texts of similar length, none repeating a text: each epoch shuffles the rows, sorts every run of
    `group` batches' worth by length, cuts it into batches of distinct texts and shuffles the batches. Padding then
    costs a fraction of what random batches pay (STS-B/SICK sentences: ~50% of the tokens of a random batch of 32
    are padding). A `batch_sampler` for `SentenceTransformerTrainingArguments`.

    With `max_tokens` (and a `tokenizer` to count them, prompts in; `TokenBudget` passes them), a batch also stops
    before its padded size (rows x the longest row's tokens, all columns) passes that many tokens, so a run of long
    texts trains in smaller batches instead of holding activations for batch_size x 2048 tokens (the activations of
    one training step grow with its padded tokens). A row longer than the budget trains alone."""

    def __init__(
        self,
        dataset,
        batch_size,
        drop_last=True,
        valid_label_columns=None,
        generator=None,
        seed=0,
        group=16,
        tokenizer=None,
        max_tokens: int | None = None,
        prompts: dict | None = None,
        max_length: int | None = None,
    ):
        columns = [c for c in TEXT_COLUMNS if c in dataset.column_names]
        self.texts = [tuple(row[c] for c in columns) for row in dataset.select_columns(columns)]
        self.max_tokens = max_tokens if tokenizer is not None else None
        if self.max_tokens is not None:
            prompts, limit = prompts or {}, max_length or 10**9
            counts = [
                tokenizer([prompts.get(c, "") + texts[k] for texts in self.texts])["input_ids"]
                for k, c in enumerate(columns)
            ]
            self.lengths = [sum(min(len(ids[i]), limit) for ids in counts) for i in range(len(self.texts))]
        else:
            self.lengths = [sum(len(text) for text in texts) for texts in self.texts]
        self.batch_size, self.drop_last, self.seed, self.group, self.epoch = batch_size, drop_last, seed, group, 0
        self._built = (None, [])  # (epoch, its batches): __len__ and __iter__ of one epoch share them

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.max_tokens is None:
            return len(self.texts) // self.batch_size if self.drop_last else -(-len(self.texts) // self.batch_size)
        return len(self._batches())  # the budget splits long runs: count this epoch's batches

    def __iter__(self):
        yield from self._batches()

    def _fits(self, batch: list, index: int) -> bool:
        """Whether row `index` joins `batch` within the budget; rows come sorted by length, so it is the longest."""
        return self.max_tokens is None or not batch or (len(batch) + 1) * self.lengths[index] <= self.max_tokens

    def _batches(self) -> list:
        if self._built[0] != self.epoch:
            self._built = (self.epoch, self._build())
        return self._built[1]

    def _build(self) -> list:
        rng = np.random.default_rng([self.seed, self.epoch])
        order, batches, carried = rng.permutation(len(self.texts)).tolist(), [], []
        chunk = self.batch_size * self.group
        for start in range(0, len(order), chunk):
            pending = sorted(carried + order[start : start + chunk], key=self.lengths.__getitem__)
            while True:
                batch, seen, rest, full = [], set(), [], False
                for index in pending:
                    texts = set(self.texts[index])
                    if full or len(batch) >= self.batch_size:
                        rest.append(index)
                    elif not self._fits(batch, index):
                        full = True  # sorted by length: the rest are longer still
                        rest.append(index)
                    elif texts & seen:
                        rest.append(index)
                    else:
                        batch.append(index)
                        seen |= texts
                if len(batch) < self.batch_size and not full:
                    carried = pending
                    break
                batches.append(batch)
                pending = rest
        if carried and not self.drop_last:
            batches.append(carried[: self.batch_size])
        rng.shuffle(batches)
        return batches


class TokenBudget:
    """The `batch_sampler` of a run with `--max-batch-tokens`: makes `LengthGroupedBatchSampler`s that count tokens
    with the student's tokenizer. Picklable (the trainer saves its arguments, this among them, with every checkpoint):
    the tokenizer is left out of the pickle, the budget kept."""

    def __init__(self, tokenizer, max_tokens: int, prompts: dict | None = None, max_length: int | None = None):
        self.tokenizer, self.max_tokens, self.prompts, self.max_length = tokenizer, max_tokens, prompts, max_length

    def __call__(self, dataset, **kwargs) -> LengthGroupedBatchSampler:
        budget = {"max_tokens": self.max_tokens, "prompts": self.prompts, "max_length": self.max_length}
        return LengthGroupedBatchSampler(dataset, tokenizer=self.tokenizer, **budget, **kwargs)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tokenizer": None}

    def __repr__(self) -> str:
        return f"TokenBudget(max_tokens={self.max_tokens})"


# ----------------------------------------------------------------------------------------------------------------
# Teacher embeddings, cached
# ----------------------------------------------------------------------------------------------------------------


def teacher_embeddings(
    teacher: str,
    rows: list[dict],
    prompts: dict[str, str],
    cache_dir: str | os.PathLike,
    batch_size: int = 32,
    dtype: str = "float32",
) -> np.ndarray:
    """(len(rows), columns, dim) teacher embeddings of every column (with its prompt), computed once: the cache key
    covers the teacher's files, the texts, the prompts and the dtype, so a change to any of them recomputes.
    `dtype="bfloat16"` runs the teacher in bfloat16 (faster where bf16 products are; embeddings within ~2e-4 cosine
    of float32's, normalised in float32); "auto" takes bfloat16 where `native_bf16()` measures it faster."""
    if dtype == "auto":
        dtype = "bfloat16" if native_bf16() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"Teacher dtype {dtype!r}: expected auto, float32 or bfloat16 (float16 overflows in Gemma).")
    from embeddinggemma_tools.files import fingerprint_folder

    columns = [c for c in TEXT_COLUMNS if c in rows[0]]
    digest = hashlib.sha256(fingerprint_folder(teacher).encode())
    digest.update(json.dumps([[row[c] for c in columns] for row in rows]).encode())
    digest.update(json.dumps({c: prompts.get(c, "") for c in columns}, sort_keys=True).encode())
    if dtype != "float32":
        digest.update(dtype.encode())
    cache = Path(cache_dir) / f"teacher-{digest.hexdigest()[:24]}.npy"
    cached = read_teacher_cache(cache, digest.hexdigest(), (len(rows), len(columns)))
    if cached is not None:
        return cached
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(teacher), device="cpu", trust_remote_code=True).to(getattr(torch, dtype))
    vectors = np.stack(
        [model.encode([row[c] for row in rows], prompt=prompts.get(c, ""), batch_size=batch_size) for c in columns],
        axis=1,
    ).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.npy")
    np.save(tmp, vectors)
    from embeddinggemma_tools.files import file_sha256

    write_json(
        cache.with_suffix(".json"),
        {"key": digest.hexdigest(), "shape": list(vectors.shape), "sha256": file_sha256(tmp), "dtype": dtype},
    )
    os.replace(tmp, cache)
    return vectors


def read_teacher_cache(cache: Path, key: str, rows_columns: tuple[int, int]) -> np.ndarray | None:
    """The cached teacher embeddings if they are provably these: the record beside them names this key (teacher files,
    texts, prompts, dtype), the file's checksum matches it, and the array has one finite unit vector per text and
    column. Anything else (a damaged file, another teacher's or prompt's cache copied in, a cache from before these
    records) is reported and recomputed, never used."""
    from embeddinggemma_tools.files import file_sha256

    if not cache.is_file():
        return None
    record_path = cache.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
        problem = None
        if record.get("key") != key:
            problem = "it was computed for another teacher, text list, prompt or dtype"
        elif record.get("sha256") != file_sha256(cache):
            problem = "its checksum does not match (the file is damaged or was replaced)"
        else:
            vectors = np.load(cache, allow_pickle=False)
            norms = np.linalg.norm(vectors, axis=-1) if vectors.ndim == 3 else None
            if vectors.shape[:2] != tuple(rows_columns) or norms is None:
                problem = f"it holds shape {vectors.shape}, not {rows_columns} texts x columns"
            elif not np.isfinite(vectors).all() or np.abs(norms - 1).max() > 1e-3:
                problem = "it holds NaN, infinite or non-unit vectors"
    except (OSError, ValueError, AttributeError) as error:
        problem = f"it cannot be read with its record ({type(error).__name__}: {error})"
    if problem is None:
        return vectors
    print(f"warning: ignoring the teacher cache {cache}: {problem}; computing it again.", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


class EmbeddingGemmaRecipeLoss(nn.Module):
    """nce_weight * MNRL(hard negatives) + gor_weight * GOR(spread-out) + distill_weight * EmbedDistill(l2), on one
    forward pass of every text column. Wrap in `MatryoshkaLoss` (see `recipe_loss`) for every Matryoshka dim.
    `labels`: teacher embeddings (batch, columns, dim), or None without distillation."""

    def __init__(
        self,
        model,
        nce_weight: float = 1.0,
        gor_weight: float = 1.0,
        distill_weight: float = 1.0,
        scale: float = 20.0,
        hardness_strength: float = 5.0,
        gather_across_devices: bool = True,
    ):
        super().__init__()
        from sentence_transformers.sentence_transformer.losses import (
            EmbedDistillLoss,
            GlobalOrthogonalRegularizationLoss,
            MultipleNegativesRankingLoss,
        )

        self.model = model
        self.weights = {"nce": nce_weight, "gor": gor_weight, "distill": distill_weight}
        self.nce = MultipleNegativesRankingLoss(
            model,
            scale=scale,
            gather_across_devices=gather_across_devices,
            hardness_mode="hard_negatives",
            hardness_strength=hardness_strength,
        )
        self.gor = GlobalOrthogonalRegularizationLoss(model, mean_weight=0, aggregation="sum")
        self.distill = EmbedDistillLoss(model, distance_metric="l2")

    def forward(self, sentence_features, labels=None):
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels=None) -> torch.Tensor:
        parts = self.components(embeddings, labels)
        return sum(self.weights[name] * value for name, value in parts.items())

    def components(self, embeddings: list[torch.Tensor], labels=None) -> dict[str, torch.Tensor]:
        """The unweighted terms, by name."""
        parts = {}
        if self.weights["nce"]:
            parts["nce"] = self.nce.compute_loss_from_embeddings(embeddings, labels)
        if self.weights["gor"]:
            parts["gor"] = sum(self.gor.compute_loss_from_embeddings(embeddings).values())
        if self.weights["distill"]:
            if labels is None or not torch.is_tensor(labels) or labels.dim() != 3:
                raise ValueError(
                    "Distillation needs teacher embeddings as labels, shaped (batch, columns, dim); "
                    "pass --teacher or set --distill-weight 0."
                )
            # At a Matryoshka dim d the student is the first d dims re-normalised; compare it with the teacher's
            # first d dims re-normalised too (MatryoshkaLoss only truncates the labels).
            dim = embeddings[0].shape[-1]
            teachers = [F.normalize(labels[:, i, :dim].float(), dim=-1) for i in range(len(embeddings))]
            parts["distill"] = self.distill.compute_loss_from_embeddings(embeddings, teachers)
        return parts


def recipe_loss(model, matryoshka_dims: list[int], **weights):
    """`MatryoshkaLoss(EmbeddingGemmaRecipeLoss)`: the whole recipe at every Matryoshka dim, equally weighted."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    return MatryoshkaLoss(model, EmbeddingGemmaRecipeLoss(model, **weights), matryoshka_dims=list(matryoshka_dims))


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


class TrainingClock:
    """Training wall-clock: runs while training, paused for evaluation; `elapsed` carries over a resume."""

    def __init__(self, budget_minutes: float | None = None, elapsed: float = 0.0):
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes
        self._elapsed, self._since = elapsed, None

    @property
    def elapsed(self) -> float:
        return self._elapsed + (time.monotonic() - self._since if self._since is not None else 0.0)

    def start(self):
        if self._since is None:
            self._since = time.monotonic()

    def pause(self):
        self._elapsed, self._since = self.elapsed, None

    def fraction(self) -> float:
        """The share of the budget spent, in [0, 1]."""
        return min(1.0, self.elapsed / self.budget) if self.budget else 0.0

    def out_of_time(self) -> bool:
        return self.budget is not None and self.elapsed >= self.budget


def budget_schedule(clock: TrainingClock, warmup: float):
    """The learning-rate factor for a time budget: linear warm-up over the first `warmup` of the budget, then linear
    decay to zero when the budget ends (the usual linear schedule, with time in place of steps)."""

    def factor(_step: int) -> float:
        spent = clock.fraction()
        if spent < warmup:
            return max(spent / warmup, 1e-3)
        return max(0.0, (1.0 - spent) / (1.0 - warmup))

    return factor


class Termination:
    """SIGTERM during `train`: the step in progress finishes, a checkpoint is saved (with the clock), and the run exits
    with 143 saying how to resume, instead of dying between checkpoints and losing the steps since the last one."""

    requested = False
    depth = 0  # `main` holds it from the start (a SIGTERM while loading is kept for the first step), `train` again
    previous = None

    def __enter__(self):
        import signal
        import threading

        if self.depth == 0:
            self.requested, self.previous = False, None
            if threading.current_thread() is threading.main_thread():
                self.previous = signal.signal(signal.SIGTERM, self.request)
        self.depth += 1
        return self

    def request(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        import signal

        self.depth -= 1
        if self.depth == 0 and self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None
        return False


TERMINATION = Termination()

# train()'s arguments that may change between a run and its --resume: they decide where files go, how often
# checkpoints, logs and the learning curve are written, not what is trained.
RESUMABLE_CHANGES = {
    "resume",
    "cache_dir",
    "logging_steps",
    "save_steps",
    "eval_every_minutes",
    "eval_sts_file",
    "eval_retrieval",
    "eval_retrieval_queries",
}


def check_resume_arguments(output: Path, arguments: dict, resuming: bool) -> None:
    """Records the run's arguments (OUTPUT_DIR/run_arguments.json) and, on --resume, refuses a run whose arguments
    differ from the recorded ones, naming each: the data order, the schedule and the losses would silently change."""
    path = output / "run_arguments.json"
    recorded = json.loads(json.dumps(arguments, default=str))
    if recorded.get("data") and not all(isinstance(item, str) for item in recorded["data"]):  # rows, not file specs
        rows = json.dumps(recorded["data"], sort_keys=True).encode()
        recorded["data"] = f"{len(arguments['data'])} rows, sha256 {hashlib.sha256(rows).hexdigest()[:16]}"
    if resuming and path.is_file():
        before = json.loads(path.read_text())
        for old_name, (name, value) in RENAMED_OPTIONS.items():
            if old_name in before:
                before[name] = value(before.pop(old_name))
        for name, value in ADDED_OPTIONS.items():
            if name in recorded:
                before.setdefault(name, value)
        changed = {
            key: (before.get(key), recorded.get(key))
            for key in sorted(set(before) | set(recorded))
            if key not in RESUMABLE_CHANGES and before.get(key) != recorded.get(key)
        }
        if changed:
            listing = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"--resume with other arguments than the run in {output}: {listing}. Resume with the same arguments "
                "(run_arguments.json records them), or start a new run in another OUTPUT_DIR."
            )
    write_json(path, recorded)


TRIM_EVERY_STEPS = 10


def release_freed_memory() -> bool:
    """Hands the pages of freed heap blocks back to the system (glibc's malloc_trim), where the C library is glibc and
    EMBEDDINGGEMMA_MALLOC_TRIM is not 0; True when it ran. Training allocates activations of a different shape at
    every step (length-grouped batches) and evaluates at others, and glibc keeps the freed blocks, fragmented: the
    60-minute run's stage 1 grew from 6 to 10 GB resident. Trimming cut the peak of its first 45 steps from 6.18 to
    5.64 GB at equal step time (docs/training.md, Memory); it costs a walk of the heap (milliseconds) and re-faulting
    the pages the next step uses."""
    if os.environ.get("EMBEDDINGGEMMA_MALLOC_TRIM", "1") == "0":
        return False
    trim = glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def glibc_malloc_trim():
    """glibc's malloc_trim, or None off Linux or under another C library (musl has none; an LD_PRELOADed allocator
    leaves glibc's in place)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def budget_callback(clock: TrainingClock, evaluation=None, eval_every_minutes: float | None = None):
    """A TrainerCallback that stops (and saves) when the clock's budget is spent, evaluates every
    `eval_every_minutes` of training time with the clock paused (`evaluation(model, minutes, step)`), writes the
    clock into every checkpoint (budget.json) so that a resumed run continues it, and hands freed memory back to the
    system every TRIM_EVERY_STEPS steps and after each evaluation (`release_freed_memory`)."""
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        next_eval = 0.0

        evaluated_step = None

        def maybe_evaluate(self, state, model, final=False):
            minutes = clock.elapsed / 60.0
            due = final or (eval_every_minutes is not None and minutes >= self.next_eval)
            if evaluation is None or not due or self.evaluated_step == state.global_step:
                return
            clock.pause()
            evaluation(model, minutes, state.global_step)
            release_freed_memory()
            self.evaluated_step = state.global_step
            while eval_every_minutes and self.next_eval <= minutes:
                self.next_eval += eval_every_minutes
            if not final:
                clock.start()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            clock.start()
            self.next_eval = clock.elapsed / 60.0  # the curve starts where this run starts
            self.maybe_evaluate(state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if clock.out_of_time() or TERMINATION.requested:
                control.should_training_stop = control.should_save = True
            else:
                self.maybe_evaluate(state, model)
            if state.global_step % TRIM_EVERY_STEPS == 0:
                release_freed_memory()

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_json(checkpoint / "budget.json", {"elapsed_seconds": clock.elapsed, "budget": clock.budget})

        def on_train_end(self, args, state, control, model=None, **kwargs):
            clock.pause()
            self.maybe_evaluate(state, model, final=True)

    return BudgetCallback()


def write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def pooled_states(model, texts: list[str], prompt: str, batch_size: int = 64) -> torch.Tensor:
    """(len(texts), hidden) mean-pooled encoder states of a SentenceTransformer over our model, prompt included:
    what the head sees."""
    from modeling_embeddinggemma import pool

    encoder = model[0].auto_model
    was_training = encoder.training
    encoder.eval()
    pooled = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            features = model.tokenize([prompt + text for text in texts[start : start + batch_size]])
            mask = features["attention_mask"]
            hidden = encoder.model(input_ids=features["input_ids"], attention_mask=mask).last_hidden_state
            pooled.append(pool(hidden.float(), mask.bool(), encoder.config.pooling_mode))
    encoder.train(was_training)
    return torch.cat(pooled)


def fit_head(model, texts: list[str], targets: np.ndarray, prompt: str, ridge: float = 1e-3) -> dict:
    """Sets the two Dense layers so that their product is the ridge least-squares map from the student's
    mean-pooled states to `targets` (the teacher's embeddings of `texts`), split evenly between the layers by an
    SVD (W2 W1 = U S V^T, W1 = sqrt(S) V^T, W2 = U sqrt(S), the rest zero). Closed form; returns the fit's figures."""
    encoder = model[0].auto_model
    dense = list(getattr(encoder, "dense", []))
    linear = len(dense) == 2 and all(layer.bias is None for layer in dense)
    if not linear or encoder.config.dense_activation != "identity":
        raise ValueError(
            "--fit-head needs the converter's linear head (two Dense layers, no bias, no activation), as "
            "`convert_checkpoint.py --embedding-dim D` gives a decoder; this model's head is another."
        )
    first, second = dense
    hidden, dim = first.in_features, second.out_features
    if targets.shape != (len(texts), dim):
        raise ValueError(f"--fit-head: teacher embeddings {targets.shape} do not match {len(texts)} texts x {dim}.")
    states = pooled_states(model, texts, prompt).double()
    y = torch.from_numpy(targets).double()
    gram = states.T @ states
    gram += ridge * gram.diagonal().mean() * torch.eye(hidden, dtype=gram.dtype)
    weight = torch.linalg.solve(gram, states.T @ y).T  # (dim, hidden)
    u, singular, vh = torch.linalg.svd(weight, full_matrices=False)  # rank <= min(dim, hidden)
    rank = singular.shape[0]
    if first.out_features < rank:
        raise ValueError(f"--fit-head: the head's inner width {first.out_features} is below the fit's rank {rank}.")
    root = singular.sqrt()
    # The embedding is normalised, so each factor's scale is free: give both the Frobenius norm of the identity head's
    # factors (sqrt(rank), singular values ~1). A least-squares map from states of norm ~100 to unit vectors has tiny
    # entries, which Adam's ~learning-rate-sized steps would wipe out in a few steps.
    factors = (root[:, None] * vh, u * root[None, :])
    factors = [factor * (rank**0.5 / factor.norm()) for factor in factors]
    with torch.no_grad():
        first.weight.zero_()
        second.weight.zero_()
        first.weight[:rank] = factors[0].to(first.weight.dtype)
        second.weight[:, :rank] = factors[1].to(second.weight.dtype)
    fitted = F.normalize(states @ weight.T, dim=-1)
    return {"texts": len(texts), "mean_cosine": float((fitted * F.normalize(y, dim=-1)).sum(-1).mean())}


def evaluation_logger(
    path: Path,
    sts_file: str | None,
    prompt_name: str | None,
    offset_minutes: float = 0.0,
    retrieval: list[str] | None = None,
    retrieval_queries: int = 100,
):
    """`evaluation(model, minutes, step)` for `budget_callback`: STS Spearman (`sts_file`) and nDCG@10 on each
    retrieval set (its first `retrieval_queries` queries, `retrieval.head`) at every Matryoshka dim, printed and
    appended to `path` (JSON lines) with the training minutes and step."""
    from embeddinggemma_tools.retrieval import evaluate_retrieval, head, read_retrieval_set

    pairs = read_sts(sts_file) if sts_file else []
    if sts_file and not pairs:
        raise ValueError(f"{sts_file} has no STS-B or SICK pairs.")
    sets = [head(read_retrieval_set(folder), retrieval_queries) for folder in retrieval or []]

    def evaluation(model, minutes, step):
        started = time.monotonic()
        record = {"minutes": round(offset_minutes + minutes, 3), "step": step}
        shown = []
        if pairs:
            scores = evaluate_model(model, pairs, prompt_name)
            record["spearman"] = {str(d): round(v, 2) for d, v in scores.items()}
            shown.append("spearman " + " ".join(f"{d}:{v:.2f}" for d, v in scores.items()))
        for dataset in sets:
            figures = evaluate_retrieval(model, dataset)
            ndcg = {str(d): round(f["ndcg@10"], 2) for d, f in figures.items()}
            record.setdefault("ndcg@10", {})[dataset.name] = ndcg
            shown.append(f"{dataset.name} ndcg@10 " + " ".join(f"{d}:{v:.2f}" for d, v in ndcg.items()))
        record["eval_seconds"] = round(time.monotonic() - started, 1)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"[eval] {record['minutes']:.1f} training minutes, step {step}: {'; '.join(shown)}", file=sys.stderr)

    return evaluation


# ----------------------------------------------------------------------------------------------------------------
# Options: named once (train(), the command line and training_summary.json all read these fields)
# ----------------------------------------------------------------------------------------------------------------


def option(default, help: str, **cli):
    """A field of `TrainingOptions`: its default, its help, and how argparse reads it (`cli`: type, action, ...)."""
    return field(default=default, metadata={"help": help, "cli": cli})


BOOLEAN = {"action": argparse.BooleanOptionalAction}


@dataclass
class TrainingOptions:
    """How `train` runs, shaped like sentence-transformers' training arguments. Each field is a `train` keyword, a
    `--flag` of `train_embeddinggemma.py train` (underscores as dashes) and a key of training_summary.json's
    `options`; run_arguments.json records them for --resume."""

    nce_weight: float = option(1.0, "weight of the NCE term (in-batch and hard negatives)", type=float)
    gor_weight: float = option(1.0, "weight of the spread-out regulariser", type=float)
    distill_weight: float = option(1.0, "weight of the embedding distillation to --teacher", type=float)
    max_steps: int | None = option(None, "plan and stop by steps (default 100 without --max-minutes)", type=int)
    max_minutes: float | None = option(None, "plan and stop by training wall-clock minutes", type=float)
    batch_size: int = option(32, "texts per batch (each dataset's batches are drawn apart)", type=int)
    learning_rate: float = option(2e-5, "peak learning rate", type=float)
    warmup: float = option(0.1, "warm-up, a fraction of the steps or minutes", type=float)
    query_prompt: str | None = option("query", "prompt name for anchors ('none' for none)")
    document_prompt: str | None = option("document", "prompt name for positives and negatives ('none' for none)")
    text_prompt: str | None = option(
        None,
        "prompt name for single texts (texts:PATH, anchor-only files), distilled under it while pairs keep the "
        "query and document prompts (default: --query-prompt; 'none' for none)",
    )
    fit_head: int = option(
        0,
        "first fit the head by least squares to the teacher's embeddings of TEXTS anchors (the flag alone: 4096)",
        type=int,
        nargs="?",
        const=4096,
        metavar="TEXTS",
    )
    held_out: list[str] | None = option(
        None, "STS-B/SICK file or BEIR-layout retrieval folder whose texts are never trained on", action="append"
    )
    eval_sts_file: str | None = option(None, "STS-B/SICK file evaluated during training (learning_curve.jsonl)")
    eval_retrieval: list[str] | None = option(
        None, "retrieval set (BEIR layout) evaluated during training: nDCG@10 in learning_curve.jsonl", action="append"
    )
    eval_retrieval_queries: int = option(
        100,
        "queries of each --eval-retrieval set evaluated during training (the first N, against the documents judged "
        "for them: a quick trend; `evaluate --retrieval` scores whole sets; 0: whole sets)",
        type=int,
    )
    eval_prompt_name: str | None = option("STS", "prompt name of that evaluation")
    eval_every_minutes: float | None = option(None, "evaluate every N training minutes (and at the end)", type=float)
    curve_offset_minutes: float = option(0.0, "training minutes of earlier stages (the curve's x axis)", type=float)
    teacher_dtype: str = option(
        "auto",
        "dtype of the teacher when caching its embeddings (auto: bfloat16 where measured faster)",
        choices=("auto", "float32", "bfloat16"),
    )
    bf16: bool | None = option(
        None,
        "bfloat16 mixed precision (default: on GPUs with bf16, and on CPUs where bf16 products measure faster than "
        "float32 ones; the choice is recorded in training_summary.json)",
        **BOOLEAN,
    )
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory, ~1/3 more compute)", **BOOLEAN
    )
    train_embeddings: bool = option(
        False, "also train the token-embedding matrix (frozen by default: 262k x hidden parameters)", **BOOLEAN
    )
    group_by_length: bool = option(
        True, "batches of similar length, no text repeated in a batch (off: random no-duplicate batches)", **BOOLEAN
    )
    max_batch_tokens: int | None = option(
        2048,
        "with length grouping, a batch stops before its padded tokens (rows x longest row, prompts in) pass this, so "
        "long texts train in smaller batches and memory stays bounded ('0': no limit)",
        type=int,
    )
    save_steps: int = option(50, "checkpoint every N steps (and when the budget ends)", type=int)
    logging_steps: int = option(10, "log the loss every N steps", type=int)
    resume: bool = option(False, "continue from the last checkpoint in OUTPUT_DIR", action="store_true")
    seed: int = option(0, "seed of the data order, the head fit and the initialisation", type=int)
    cache_dir: str | None = option(None, "teacher-embedding cache (default OUTPUT_DIR/teacher-cache)")

    def __post_init__(self):
        for name in ("query_prompt", "document_prompt"):
            if getattr(self, name) == "none":
                setattr(self, name, None)
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"--max-minutes {self.max_minutes}: expected a positive number of training minutes.")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 0:
            raise ValueError(f"--max-batch-tokens {self.max_batch_tokens}: expected a number of tokens, or 0 for none.")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for item in fields(cls):
            parser.add_argument(
                "--" + item.name.replace("_", "-"),
                dest=item.name,
                default=item.default,
                help=item.metadata["help"],
                **item.metadata["cli"],
            )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> TrainingOptions:
        return cls(**{item.name: getattr(args, item.name) for item in fields(cls)})


# Names that earlier releases recorded in run_arguments.json, read as today's (value mapped) when resuming.
RENAMED_OPTIONS = {
    "freeze_embeddings": ("train_embeddings", lambda frozen: not frozen),
    "fit_head_texts": ("fit_head", lambda texts: texts),
}
# Options that earlier releases did not record, with the value that gives what those releases did.
ADDED_OPTIONS = {"max_batch_tokens": 0, "text_prompt": None}


# ----------------------------------------------------------------------------------------------------------------
# train(): its steps in order
# ----------------------------------------------------------------------------------------------------------------


def train(
    model_dir: str,
    output_dir: str,
    data: list[str] | list[dict],
    teacher: str | None = None,
    options: TrainingOptions | None = None,
    **overrides,
) -> Path:
    """Fine-tunes MODEL_DIR with the recipe; returns OUTPUT_DIR/final (our format). Checkpoints go to
    OUTPUT_DIR/checkpoint-N; `resume=True` continues from the last one. `options` (`TrainingOptions`), and any of
    its fields as keywords, say how.

    `max_minutes` plans the run for a training wall-clock budget (the learning rate warms up and decays with time
    rather than steps) and stops on time with a checkpoint and the final model; evaluation and teacher caching are
    not counted. `max_steps` plans it by steps instead (default 100 when neither is given); with both, whichever
    comes first stops it. OUTPUT_DIR/training_summary.json records steps, seconds, tokens, tokens/s and every option;
    `held_out` files' texts (STS-B/SICK) are removed from the data and OUTPUT_DIR/trained_texts.txt lists every
    text trained on (`check-held-out` verifies it). SIGTERM finishes the step, saves a checkpoint and exits 143;
    `resume=True` with other arguments than the recorded run's (OUTPUT_DIR/run_arguments.json) is refused."""
    options = replace(options or TrainingOptions(), **overrides)  # an unknown keyword is a TypeError naming it
    given = {"data": data, "teacher": teacher, **asdict(options)}  # recorded for --resume, as given
    if options.max_steps is None and options.max_minutes is None:
        options = replace(options, max_steps=100)
    output = Path(output_dir)
    rows = training_rows(data, teacher, options)
    output.mkdir(parents=True, exist_ok=True)
    (output / "trained_texts.txt").write_text("\n".join(trained_texts(rows)) + "\n", encoding="utf-8")

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu", trust_remote_code=True)
    config = model[0].auto_model.config
    prompts = dataset_prompts(config, options)
    train_dataset, fit_texts, fit_targets = training_datasets(rows, teacher, prompts, config, output, options)
    prompts = {name: prompts[name] for name in split_by_columns(rows)}

    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda c: int(c.name.rsplit("-", 1)[-1]))
    resuming = options.resume and bool(checkpoints)
    check_resume_arguments(output, given, resuming)
    budget_file = checkpoints[-1] / "budget.json" if resuming else None
    elapsed = json.loads(budget_file.read_text())["elapsed_seconds"] if budget_file and budget_file.is_file() else 0.0
    clock = TrainingClock(options.max_minutes, elapsed)
    if not options.train_embeddings:
        model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    if options.fit_head and not resuming:
        fit_head_step(model, fit_texts, fit_targets, clock, options)

    bf16_source = "--bf16/--no-bf16" if options.bf16 is not None else "measured (precision_embeddinggemma)"
    bf16 = native_bf16() if options.bf16 is None else options.bf16
    trainer = recipe_trainer(model, config, train_dataset, prompts, output, clock, bf16, options)
    with TERMINATION:
        trainer.train(resume_from_checkpoint=True if resuming else None)
    if TERMINATION.requested:
        print(
            f"stopped by SIGTERM after step {trainer.state.global_step}; checkpoint-{trainer.state.global_step} is "
            "saved with the training clock. Continue with the same command and --resume.",
            file=sys.stderr,
        )
        raise SystemExit(143)
    if trainer.state.global_step == 0:
        raise ValueError(
            f"No training step ran: {len(rows)} rows give no full batch of {options.batch_size} distinct texts per "
            "dataset (batches skip duplicates and drop the last partial one). Add data or lower --batch-size."
        )
    final = output / "final"
    if trainer.is_world_process_zero():
        model[0].auto_model.save_pretrained(final)
        model.tokenizer.save_pretrained(final)
        resolved = {"bf16": bool(bf16), "bf16_chosen_by": bf16_source}
        write_summary(output, trainer, clock, clock.elapsed - elapsed, teacher, options, resolved)
    return final


def training_rows(data, teacher: str | None, options: TrainingOptions) -> list[dict]:
    """Step 1, data: the rows to train on, held-out texts removed, single texts kept once; checked against the
    losses asked for."""
    rows = load_data(data) if data and isinstance(data[0], str) else list(data)
    if options.held_out:
        rows, dropped = drop_held_out(rows, held_out_texts(options.held_out))
        held_out = ", ".join(map(str, options.held_out))
        print(f"held out: {dropped} rows sharing a text with {held_out} removed", file=sys.stderr)
    if not rows:
        raise ValueError("No training rows: check --data (and --held-out).")
    singles = {text_key(row["anchor"]): row for row in rows if "positive" not in row}
    rows = [row for row in rows if "positive" in row] + list(singles.values())  # a text on its own once
    if options.distill_weight and not teacher:
        raise ValueError("Distillation needs --teacher (an embedding model folder), or --distill-weight 0.")
    if (options.fit_head or 0) > 0 and not teacher:
        raise ValueError("--fit-head fits the head to the teacher's embeddings: pass --teacher.")
    if options.nce_weight and any("positive" not in row for row in rows):
        raise ValueError(
            "Single texts (texts:PATH) have no positive for the NCE term: train them with --nce-weight 0 "
            "(distillation), or give (anchor, positive) rows."
        )
    return rows


def dataset_prompts(config, options: TrainingOptions) -> dict[str, dict[str, str]]:
    """{dataset: {column: prompt text}} for the datasets of `split_by_columns`: anchors under the query prompt,
    positives and negatives under the document prompt, single texts under `text_prompt` (default: the query
    prompt), as sentence-transformers' `prompts` takes them per dataset."""

    def text(name):
        return config.prompt_for(name) if name and name != "none" else ""

    query, document = text(options.query_prompt), text(options.document_prompt)
    single = query if options.text_prompt is None else text(options.text_prompt)
    pair = {"anchor": query, "positive": document, "negative": document}
    return {"triplets": pair, "pairs": pair, "texts": {"anchor": single}}


def training_datasets(rows, teacher, prompts: dict, config, output: Path, options: TrainingOptions):
    """Step 2, teacher cache: one dataset per column layout, each row labelled with the teacher's embeddings (under
    that dataset's prompts, `dataset_prompts`) when distilling or fitting the head; returns (dataset or DatasetDict,
    prompted anchors and their targets for the head fit)."""
    from datasets import Dataset, DatasetDict

    cache = options.cache_dir or output / "teacher-cache"
    datasets, fit_texts, fit_targets = {}, [], []
    for name, group in split_by_columns(rows).items():
        columns = {c: [row[c] for row in group] for c in TEXT_COLUMNS if c in group[0]}
        if options.distill_weight or options.fit_head:
            vectors = teacher_embeddings(teacher, group, prompts[name], cache, dtype=options.teacher_dtype)
            if vectors.shape[-1] != config.embedding_dim:
                raise ValueError(
                    f"The teacher's embeddings have {vectors.shape[-1]} dims but the student's {config.embedding_dim}; "
                    "convert the student with --embedding-dim matching the teacher (e.g. 768)."
                )
            # float32 arrays go to Arrow as they are: `.tolist()` made Python floats of them first, ~16x the
            # cache's size in memory at once (the stage-1 process grew to 17 GB)
            columns["label"] = np.ascontiguousarray(vectors, dtype=np.float32)
            fit_texts += [prompts[name]["anchor"] + anchor for anchor in columns["anchor"]]
            fit_targets.append(vectors[:, 0])
        datasets[name] = Dataset.from_dict(columns)
    train_dataset = DatasetDict(datasets) if len(datasets) > 1 else next(iter(datasets.values()))
    return train_dataset, fit_texts, fit_targets


def fit_head_step(model, fit_texts, fit_targets, clock: TrainingClock, options: TrainingOptions):
    """Step 3, head fit: least squares of the head to the teacher's embeddings of `options.fit_head` anchors (each
    with its dataset's prompt), on the training clock (the fit is training: it counts against the budget)."""
    clock.start()
    order = np.random.default_rng(options.seed).permutation(len(fit_texts))[: options.fit_head]
    figures = fit_head(model, [fit_texts[i] for i in order], np.concatenate(fit_targets)[order], "")
    clock.pause()
    print(
        f"head fitted by least squares on {figures['texts']} texts: mean cosine {figures['mean_cosine']:.4f} "
        f"({clock.elapsed:.0f}s)",
        file=sys.stderr,
    )


def recipe_trainer(model, config, train_dataset, prompts, output: Path, clock, bf16: bool, options: TrainingOptions):
    """Steps 4-6, loss, budget and evaluation: sentence-transformers' trainer with the recipe's loss, the clock's
    budget and the learning curve's evaluation as a callback."""
    import transformers
    from sentence_transformers import SentenceTransformerTrainingArguments

    # transformers 5 takes the warm-up ratio as a float `warmup_steps`; 4.x has `warmup_ratio`
    warmup = options.warmup
    warmup_args = (
        {"warmup_steps": warmup} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": warmup}
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output),
        max_steps=options.max_steps if options.max_steps is not None else 10**9,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        **warmup_args,
        bf16=bf16,
        gradient_checkpointing=options.gradient_checkpointing,
        save_steps=options.save_steps,
        save_total_limit=2,
        logging_steps=options.logging_steps,
        report_to=[],
        seed=options.seed,
        data_seed=options.seed,
        dataloader_drop_last=True,
        prompts=prompts if len(prompts) > 1 else next(iter(prompts.values())),
        batch_sampler=batch_sampler(model, prompts, options),
        use_cpu=not torch.cuda.is_available(),
    )
    weights = {"nce_weight": options.nce_weight, "gor_weight": options.gor_weight}
    loss = recipe_loss(model, config.matryoshka_dims, **weights, distill_weight=options.distill_weight)
    evaluation = None
    if options.eval_sts_file or options.eval_retrieval:
        evaluation = evaluation_logger(
            output / "learning_curve.jsonl",
            options.eval_sts_file,
            options.eval_prompt_name,
            options.curve_offset_minutes,
            retrieval=options.eval_retrieval,
            retrieval_queries=options.eval_retrieval_queries,
        )
    callback = budget_callback(clock, evaluation, options.eval_every_minutes)
    return RecipeTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, callbacks=[callback], clock=clock, warmup=warmup
    )


def batch_sampler(model, prompts: dict, options: TrainingOptions):
    """The trainer's batch sampler: length-grouped (with the token budget when set), or sentence-transformers'
    random no-duplicate batches."""
    if not options.group_by_length:
        return "no_duplicates"
    if not options.max_batch_tokens:
        return LengthGroupedBatchSampler
    # a column's tokens are counted under the longest prompt any dataset gives it: the budget holds for every dataset
    longest = {}
    for columns in prompts.values():
        for column, prompt in columns.items():
            longest[column] = max(longest.get(column, ""), prompt, key=lambda p: len(model.tokenizer(p)["input_ids"]))
    return TokenBudget(model.tokenizer, options.max_batch_tokens, longest, getattr(model, "max_seq_length", None))


def peak_rss_gb() -> float:
    """The peak resident memory of this process so far, in GB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e9 if sys.platform == "darwin" else 1e6), 2)


def write_summary(output: Path, trainer, clock, seconds: float, teacher, options: TrainingOptions, resolved: dict):
    """OUTPUT_DIR/training_summary.json: steps, clock, this run's rates, every option as given, and what was
    resolved from them on this machine (bf16, the teacher's dtype, threads)."""
    tokens = trainer.tokens
    write_json(
        output / "training_summary.json",
        {
            "steps": trainer.state.global_step,
            "training_seconds": round(clock.elapsed, 1),
            "budget_seconds": clock.budget,
            "last_step_started_at": round(trainer.step_log[-1][0], 3) if trainer.step_log else None,
            "this_run": {
                "seconds": round(seconds, 1),
                "optimizer_steps": len(trainer.step_log),
                "seconds_per_step": round(seconds / max(len(trainer.step_log), 1), 3),
                "tokens": tokens["real"],
                "padded_tokens": tokens["padded"],
                "tokens_per_second": round(tokens["real"] / max(seconds, 1e-9), 1),
                "steady": trainer.steady_rates(),
                "peak_rss_gb": peak_rss_gb(),
            },
            "teacher": teacher,
            "options": asdict(options),
            "resolved": {
                **resolved,
                "teacher_dtype": resolved_teacher_dtype(options.teacher_dtype),
                "threads": torch.get_num_threads(),
            },
        },
    )


def native_bf16() -> bool:
    """bfloat16 mixed precision pays where bf16 products are faster than float32 ones: GPUs with bf16, and CPUs where
    the precision probe measures them faster (flags alone are not enough: one Xeon VM lists AVX512_BF16 and runs
    bf16 no faster; precision_embeddinggemma.py)."""
    from precision_embeddinggemma import bf16_autocast_pays

    return bf16_autocast_pays()


def resolved_teacher_dtype(teacher_dtype: str) -> str:
    return ("bfloat16" if native_bf16() else "float32") if teacher_dtype == "auto" else teacher_dtype


def _recipe_trainer_class():
    from sentence_transformers import SentenceTransformerTrainer

    class _RecipeTrainer(SentenceTransformerTrainer):
        """SentenceTransformerTrainer that counts the tokens it trains on and, with a time budget, schedules the
        learning rate by the training clock."""

        def __init__(self, *args, clock: TrainingClock, warmup: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.clock, self.warmup = clock, warmup
            self.tokens = {"real": 0, "padded": 0}
            self.step_log = []

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.clock.budget is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                optimizer = optimizer or self.optimizer
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, budget_schedule(self.clock, self.warmup)
                )
            return self.lr_scheduler

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                for key, value in inputs.items():
                    if key.endswith("attention_mask") and torch.is_tensor(value):
                        self.tokens["real"] += int(value.sum())
                        self.tokens["padded"] += value.numel()
            return super().compute_loss(model, inputs, *args, **kwargs)

        def training_step(self, *args, **kwargs):
            # one entry per step: when it started and the real tokens trained on so far (steady-state rates)
            self.step_log.append((self.clock.elapsed, self.tokens["real"]))
            return super().training_step(*args, **kwargs)

        def steady_rates(self) -> dict:
            """Seconds per step and tokens/s from the second step to the last one started (the first pays for
            warm-up), or {} with fewer than three steps."""
            if len(self.step_log) < 3:
                return {}
            (t0, n0), (t1, n1) = self.step_log[1], self.step_log[-1]
            steps = len(self.step_log) - 2
            return {
                "seconds_per_step": round((t1 - t0) / steps, 3),
                "tokens_per_second": round((n1 - n0) / (t1 - t0), 1),
            }

    return _RecipeTrainer


def RecipeTrainer(*args, **kwargs):  # noqa: N802 - a class, built when sentence-transformers is imported
    return _recipe_trainer_class()(*args, **kwargs)


def soup(output_dir: str, checkpoints: list[str], weights: list[float] | None = None) -> Path:
    """Weighted average of the weights of checkpoints of one architecture (uniform by default), saved with the
    first checkpoint's config, code and tokenizer."""
    from safetensors.torch import load_file, save_file

    if len(checkpoints) < 2:
        raise ValueError("A soup needs at least two checkpoints.")
    weights = weights or [1.0 / len(checkpoints)] * len(checkpoints)
    if len(weights) != len(checkpoints) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"--weights {weights} must give one weight per checkpoint, summing to 1.")
    states = [load_file(Path(c) / "model.safetensors") for c in checkpoints]
    for checkpoint, state in zip(checkpoints[1:], states[1:]):
        if state.keys() != states[0].keys() or any(state[k].shape != states[0][k].shape for k in state):
            raise ValueError(f"{checkpoint} does not have the architecture of {checkpoints[0]}: keys or shapes differ.")
    averaged = {
        key: sum(w * s[key].double() for w, s in zip(weights, states)).to(states[0][key].dtype) for key in states[0]
    }
    output = Path(output_dir)
    if output.exists():
        raise ValueError(f"{output} exists; choose a new folder for the soup.")
    shutil.copytree(checkpoints[0], output, ignore=shutil.ignore_patterns("*.safetensors", "optimizer.pt", "*.bin"))
    save_file(averaged, output / "model.safetensors", metadata={"format": "pt"})
    return output


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties."""

    def ranks(values):
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):  # average ranks of ties
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    return float(np.corrcoef(ranks(np.asarray(x)), ranks(np.asarray(y)))[0, 1])


def evaluate_model(model, pairs: list[tuple[str, str, float]], prompt_name: str | None = None, batch_size: int = 32):
    """{dim: Spearman x100} of the cosine of each pair against its score, at each Matryoshka dim, for a loaded
    SentenceTransformer."""
    if prompt_name is not None and prompt_name not in model.prompts:
        raise ValueError(f"Unknown --prompt-name {prompt_name!r}; this model knows {sorted(model.prompts)}.")
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vectors = dict(
        zip(texts, model.encode(texts, prompt_name=prompt_name, batch_size=batch_size, convert_to_numpy=True))
    )
    from embeddinggemma_tools.retrieval import matryoshka_dims

    scores = np.array([s for _, _, s in pairs])
    results = {}
    for dim in matryoshka_dims(model):
        a = np.stack([vectors[x][:dim] for x, _, _ in pairs])
        b = np.stack([vectors[y][:dim] for _, y, _ in pairs])
        cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        results[dim] = 100 * spearman(cosine, scores)
    return results


def evaluate(
    model_dir: str, sts_file: str, prompt_name: str | None = None, batch_size: int = 32, model=None
) -> dict[int, float]:
    """STS Spearman (cosine, x100) at each Matryoshka dim on an STS-B or SICK file (told apart by SICK's header),
    for our folders and any SentenceTransformer folder."""
    from sentence_transformers import SentenceTransformer

    pairs = read_sts(sts_file)
    if not pairs:
        raise ValueError(
            f"{sts_file} has no STS-B rows (genre, file, year, id, score, sentence1, sentence2) or SICK rows "
            "(a pair_ID, sentence_A, sentence_B, relatedness_score header)."
        )
    model = model or SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=True)
    return evaluate_model(model, pairs, prompt_name, batch_size)


def check_held_out(run_dirs: list[str], held_out: list[str]) -> int:
    """How many texts the runs trained on (their trained_texts.txt) are in the held-out files; raises if any."""
    keys = held_out_texts(held_out)
    if not keys:
        raise ValueError(f"{', '.join(held_out)}: no STS-B or SICK pairs to hold out.")
    trained = set()
    for run in run_dirs:
        listing = Path(run) / "trained_texts.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing} does not exist: is {run} a `train` OUTPUT_DIR?")
        # keyed again: listings written before text_key learned Unicode and punctuation are checked the same way
        trained |= {text_key(line) for line in listing.read_text(encoding="utf-8").splitlines() if line}
    leaked = sorted(trained & keys)
    if leaked:
        raise ValueError(f"{len(leaked)} held-out texts were trained on, e.g. {leaked[:3]}.")
    return len(trained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="fine-tune with the recipe")
    t.add_argument("model_dir")
    t.add_argument("output_dir")
    t.add_argument(
        "--data",
        action="append",
        required=True,
        help="sick:PATH, stsb:PATH (pairs), texts:PATH (every sentence of an STS-B/SICK file, for distillation) "
        "or a .jsonl/.csv/.parquet file of anchor,positive[,negative] rows",
    )
    t.add_argument("--teacher", help="teacher embedding model folder (SentenceTransformer-loadable)")
    TrainingOptions.add_arguments(t)
    s = commands.add_parser("soup", help="average checkpoints")
    s.add_argument("output_dir")
    s.add_argument("checkpoints", nargs="+")
    s.add_argument("--weights", type=lambda v: [float(w) for w in v.split(",")])
    e = commands.add_parser("evaluate", help="STS-B and SICK-R Spearman at each Matryoshka dim")
    e.add_argument("model_dir")
    e.add_argument("--sts-file", help="STS-B (or SICK, detected by its header) file: 'dim D spearman X' lines")
    e.add_argument("--sick-file", help="SICK file: 'sick-r dim D spearman X' lines, printed before STS-B's")
    e.add_argument("--prompt-name")
    e.add_argument(
        "--retrieval",
        action="append",
        metavar="DIR",
        help="a retrieval set in BEIR's layout (corpus, queries, qrels; embeddinggemma_tools/retrieval.py): "
        "'retrieval NAME dim D ndcg@10 X recall@1 X recall@10 X mrr@10 X' lines",
    )
    e.add_argument(
        "--retrieval-queries",
        type=int,
        default=0,
        metavar="N",
        help="score each retrieval set on its first N queries against the documents judged for them and as many "
        "others (a quick look; the set is named SET[:N] in the lines; default 0: the whole set)",
    )
    e.add_argument("--query-prompt-name", default="query", help="prompt of retrieval queries ('none' for none)")
    e.add_argument("--document-prompt-name", default="document", help="prompt of retrieval documents ('none')")
    c = commands.add_parser("check-held-out", help="fail if a run trained on a held-out text")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--held-out", action="append", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            TERMINATION.__enter__()  # for the whole command: a SIGTERM while loading stops after the first step
            final = train(
                args.model_dir, args.output_dir, args.data, args.teacher, TrainingOptions.from_arguments(args)
            )
            print(f"Wrote {final}")
        elif args.command == "soup":
            print(f"Wrote {soup(args.output_dir, args.checkpoints, args.weights)}")
        elif args.command == "check-held-out":
            count = check_held_out(args.run_dirs, args.held_out)
            print(f"held-out check passed: none of the {count} trained texts is in {', '.join(args.held_out)}")
        else:
            if not (args.sts_file or args.sick_file or args.retrieval):
                raise ValueError("evaluate needs --sts-file, --sick-file and/or --retrieval DIR.")
            from sentence_transformers import SentenceTransformer

            from embeddinggemma_tools.retrieval import evaluate_retrieval, head, read_retrieval_set

            # bad folders are reported before the model loads
            datasets = [head(read_retrieval_set(folder), args.retrieval_queries) for folder in args.retrieval or []]
            model = SentenceTransformer(str(args.model_dir), device="cpu", trust_remote_code=True)
            for prefix, path in (("sick-r ", args.sick_file), ("", args.sts_file)):
                if path:
                    for dim, score in evaluate(args.model_dir, path, args.prompt_name, model=model).items():
                        print(f"{prefix}dim {dim} spearman {score:.2f}")
            prompts = [None if name == "none" else name for name in (args.query_prompt_name, args.document_prompt_name)]
            for dataset in datasets:
                for dim, figures in evaluate_retrieval(model, dataset, *prompts).items():
                    print(f"retrieval {dataset.name} dim {dim} " + " ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
