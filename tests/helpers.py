"""What the tests share: tolerances per dtype, tiny models and batches, corpus files. One module, imported by name
(`from helpers import ...`), so that no test file imports another."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from modeling_embeddinggemma import EmbeddingGemmaModel
from testing_embeddinggemma import randomize_, tiny_config


# Tolerances, per dtype, for every numeric comparison of the suite.
ATOL = 1e-5  # float32: max abs difference of embeddings and hidden states between two implementations
BF16_ATOL = 2e-2  # bfloat16 sentence embeddings: two paths round differently (3 significant digits)


def count_calls(monkeypatch, module, name: str) -> list:
    """Replaces `module.name` by a wrapper that records each call in the returned list, then calls the original."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


LENGTHS = [16, 9, 3, 12]  # right-padded to 16: longer than the tiny model's +-2 window, with much padding


def make_batch(lengths=LENGTHS, vocab=384, seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    input_ids = torch.randint(4, vocab, (len(lengths), length), generator=generator)
    attention_mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        input_ids[row, 0], input_ids[row, n - 1], input_ids[row, n:] = 2, 1, 0  # <bos> ... <eos> <pad>...
    return input_ids, attention_mask


def tiny_model(attn="sdpa", **overrides):
    model = randomize_(EmbeddingGemmaModel(tiny_config(**overrides)))
    model.config._attn_implementation = attn
    return model.eval()


# Corpus files (embed_corpus.py)

WORDS = "the a man woman dog cat is are playing guitar on red planet mars in blue sky with".split()


def write_corpus(path: Path, rows: int = 240, seed: int = 0, extra=()) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = [
        {"id": f"doc-{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))), "title": f"t{i % 7}"}
        for i in range(rows)
    ]
    records += list(extra)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return records


def read_output(folder: Path) -> dict:
    table = pq.read_table(folder)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.stack(table.column("embedding").to_numpy(zero_copy_only=False))))
