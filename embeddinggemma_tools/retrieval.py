# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Retrieval evaluation in the form users know from BEIR and MTEB: a folder of queries, a corpus and relevance
judgements; nDCG@10, recall@1, recall@10 and MRR@10 (x100) at every Matryoshka dim, queries under the query prompt
and documents under the document prompt (with their titles, as EmbeddingGemma was trained).

A retrieval set is a folder with (BEIR's layout; .jsonl or .tsv for each):

    corpus.jsonl    {"_id": "d1", "title": "...", "text": "..."}       or corpus.tsv:  id <TAB> [title <TAB>] text
    queries.jsonl   {"_id": "q1", "text": "..."}                       or queries.tsv: id <TAB> text
    qrels/test.tsv  query-id <TAB> corpus-id <TAB> score (a header line is allowed; also qrels.tsv or qrels.jsonl
                    with {"query-id", "corpus-id", "score"})

Scores follow trec_eval (what BEIR's and MTEB's pytrec_eval compute): nDCG with linear gain and log2(rank + 1)
discount over the judged documents; a document counts as relevant when its score is above 0.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


METRICS = ("ndcg@10", "recall@1", "recall@10", "mrr@10")


class RetrievalSetError(ValueError):
    """A retrieval folder that cannot be read; the message says which file and what was expected."""


@dataclass
class RetrievalSet:
    name: str
    queries: dict[str, str]
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    qrels: dict[str, dict[str, float]]  # query id -> {corpus id: score}


def _find(folder: Path, *names: str) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _rows(path: Path) -> list:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as error:
                        raise RetrievalSetError(f"{path}:{number} is not JSON ({error}).") from None
        return rows
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_retrieval_set(folder: str | Path) -> RetrievalSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise RetrievalSetError(f"--retrieval {folder}: not a folder (expected corpus, queries and qrels files in it).")
    corpus_file = _find(folder, "corpus.jsonl", "corpus.tsv")
    queries_file = _find(folder, "queries.jsonl", "queries.tsv")
    qrels_file = _find(folder, "qrels/test.tsv", "qrels.tsv", "qrels/test.jsonl", "qrels.jsonl")
    missing = [
        name
        for name, found in (
            ("corpus.jsonl", corpus_file),
            ("queries.jsonl", queries_file),
            ("qrels/test.tsv", qrels_file),
        )
        if found is None
    ]
    if missing:
        raise RetrievalSetError(
            f"{folder} lacks {', '.join(missing)} (or their .tsv/.jsonl forms): a retrieval set is BEIR's layout, "
            "corpus, queries and relevance judgements."
        )
    try:
        corpus, queries, qrels = _read(corpus_file, queries_file, qrels_file)
    except (KeyError, TypeError, AttributeError) as error:
        raise RetrievalSetError(
            f"{folder}: a row lacks {error} (corpus rows need _id and text, queries _id and text, qrels query-id, "
            "corpus-id and score)."
        ) from None
    unknown_queries = sorted(set(qrels) - set(queries))
    unknown_documents = sorted({d for judged in qrels.values() for d in judged} - set(corpus))
    if unknown_queries or unknown_documents:
        raise RetrievalSetError(
            f"{qrels_file} judges ids that {folder} does not have: queries {unknown_queries[:5]}, documents "
            f"{unknown_documents[:5]}. Every judged id must be in queries and corpus."
        )
    qrels = {q: judged for q, judged in qrels.items() if any(score > 0 for score in judged.values())}
    if not qrels or not corpus:
        raise RetrievalSetError(f"{folder}: no query with a relevant document (score > 0), or an empty corpus.")
    return RetrievalSet(folder.name, {q: queries[q] for q in qrels}, corpus, qrels)


def _read(corpus_file: Path, queries_file: Path, qrels_file: Path):
    corpus, queries, qrels = {}, {}, {}
    for row in _rows(corpus_file):
        if isinstance(row, dict):
            corpus[str(row["_id"])] = (str(row.get("title") or ""), str(row.get("text") or ""))
        elif len(row) >= 2 and row[0] not in ("_id", "id"):
            corpus[row[0]] = (row[1], row[2]) if len(row) >= 3 else ("", row[1])
    for row in _rows(queries_file):
        if isinstance(row, dict):
            queries[str(row["_id"])] = str(row["text"])
        elif len(row) >= 2 and row[0] not in ("_id", "id"):
            queries[row[0]] = row[1]
    for row in _rows(qrels_file):
        if isinstance(row, dict):
            query, document, score = str(row["query-id"]), str(row["corpus-id"]), row.get("score", 1)
        elif len(row) >= 3:
            query, document, score = row[0], row[1], row[2]
        else:
            continue
        try:
            score = float(score)
        except ValueError:
            continue  # the header line
        qrels.setdefault(query, {})[document] = score
    return corpus, queries, qrels


def head(dataset: RetrievalSet, queries: int) -> RetrievalSet:
    """The set's first `queries` queries (in file order) against the documents judged for them and as many others
    (the first in file order): a small, quick version for a learning curve (fewer distractors than the whole set:
    higher scores, the same trend); 0 or more queries than the set has: the set itself."""
    if not queries or queries >= len(dataset.queries):
        return dataset
    kept = list(dataset.queries)[:queries]
    judged = {d for q in kept for d in dataset.qrels[q]}
    others = [d for d in dataset.corpus if d not in judged][: len(judged)]
    documents = judged | set(others)
    return RetrievalSet(
        f"{dataset.name}[:{queries}]",
        {q: dataset.queries[q] for q in kept},
        {d: text for d, text in dataset.corpus.items() if d in documents},
        {q: dataset.qrels[q] for q in kept},
    )


def retrieval_metrics(scores: np.ndarray, query_ids: list[str], corpus_ids: list[str], qrels) -> dict[str, float]:
    """scores (queries, corpus) -> the mean of each of `METRICS` over the queries, x100."""
    k = min(10, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    totals = dict.fromkeys(METRICS, 0.0)
    for row, query in enumerate(query_ids):
        judged = qrels[query]
        relevant = {d for d, s in judged.items() if s > 0}
        ranked = [corpus_ids[i] for i in order[row]]
        gains = [max(judged.get(d, 0.0), 0.0) for d in ranked]
        dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
        ideal = sorted((s for s in judged.values() if s > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
        totals["ndcg@10"] += dcg / idcg
        totals["recall@1"] += len(relevant & set(ranked[:1])) / len(relevant)
        totals["recall@10"] += len(relevant & set(ranked)) / len(relevant)
        first = next((rank for rank, d in enumerate(ranked) if d in relevant), None)
        totals["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
    return {name: 100 * total / len(query_ids) for name, total in totals.items()}


def matryoshka_dims(model) -> list[int]:
    """The dims a loaded SentenceTransformer is evaluated at: its config's `matryoshka_dims` (our folders), else its
    full dim and EmbeddingGemma's 512/256/128 below it."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension (the old name warns); 5.x has the old only
    full = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    return list(getattr(config, "matryoshka_dims", None) or [full] + [d for d in (512, 256, 128) if d < full])


def document_prompt(model, title: str, prompt_name: str | None) -> str:
    """The prompt of a document with `title`: EmbeddingGemma's `title: {title} | text: ` when the model's config has
    that template, else the named prompt as it is."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    template = getattr(config, "document_title_template", None)
    if title and template and prompt_name == "document":
        return template.format(title=title)
    return model.prompts.get(prompt_name, "") if prompt_name else ""


def evaluate_retrieval(
    model,
    dataset: RetrievalSet,
    query_prompt_name: str | None = "query",
    document_prompt_name: str | None = "document",
    batch_size: int = 32,
) -> dict[int, dict[str, float]]:
    """{dim: {metric: value}} for a loaded SentenceTransformer on `dataset`, at each Matryoshka dim (re-normalised)."""
    for name in (query_prompt_name, document_prompt_name):
        if name is not None and name not in model.prompts:
            raise ValueError(f"Unknown prompt name {name!r}; this model knows {sorted(model.prompts)}.")
    query_ids, corpus_ids = list(dataset.queries), list(dataset.corpus)
    query_prompt = model.prompts.get(query_prompt_name, "") if query_prompt_name else ""
    queries = model.encode(
        [query_prompt + dataset.queries[q] for q in query_ids], batch_size=batch_size, convert_to_numpy=True
    )
    titled = [dataset.corpus[d] for d in corpus_ids]
    documents = model.encode(
        [document_prompt(model, title, document_prompt_name) + text for title, text in titled],
        batch_size=batch_size,
        convert_to_numpy=True,
    )
    results = {}
    for dim in matryoshka_dims(model):
        q = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
        d = documents[:, :dim] / np.linalg.norm(documents[:, :dim], axis=1, keepdims=True)
        results[dim] = retrieval_metrics(q @ d.T, query_ids, corpus_ids, dataset.qrels)
    return results
