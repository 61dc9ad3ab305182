"""Corpus embedding throughput: plain `model.encode_document` in one process vs `embed_corpus.py` locally and on Ray
with 1 and 2 workers, on the same texts, with the outputs checked against plain encode.

    python benchmarks/bench_corpus.py [--model DIR] [--docs 400] [--shard-rows 100]

Without --model (and without EMBEDDINGGEMMA_REFERENCE) a tiny random model is built, which only measures overheads.
Each figure is one end-to-end run (Ray start-up and model loading included, as a user pays them), so the ratios
include fixed costs that shrink with the corpus size.
"""

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embed_corpus import embed_corpus  # noqa: E402


WORDS = (
    "the planet mars is red and the sky is blue while a quiet river carries sediment towards the delta every "
    "spring and scientists measure its slow orbit around a distant star"
).split()


def make_corpus(path: Path, docs: int) -> list[str]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 120)))) for _ in range(docs)]
    with open(path, "w") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("EMBEDDINGGEMMA_CONVERTED"))
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--shard-rows", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 40 docs, no Ray: checks the script runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models and exports: gigabytes with --reference
    model_dir = args.model
    if args.smoke or not model_dir:
        from convert_checkpoint import convert
        from testing_embeddinggemma import build_tiny_sentence_transformer

        build_tiny_sentence_transformer(work / "st")
        model_dir = str(convert(str(work / "st"), work / "model", matryoshka_dims=[48]))
        print("model: a tiny random model (overheads only); pass --model for real figures")
    docs = 40 if args.smoke else args.docs
    texts = make_corpus(work / "corpus.jsonl", docs)

    import torch
    from transformers import AutoModel

    started = time.perf_counter()
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    reference = model.encode_document(texts)
    plain = time.perf_counter() - started
    tokens = sum(len(ids) for ids in model._tokenize([model.config.prompts["document"] + t for t in texts]))
    del model
    rows = [("plain encode_document (1 process)", plain, 0.0)]

    runs = [("embed_corpus --local", {"local": True})]
    if not args.smoke:
        runs += [
            ("embed_corpus Ray, 1 worker", {"num_workers": 1}),
            ("embed_corpus Ray, 2 workers", {"num_workers": 2}),
        ]
    for name, kwargs in runs:
        out = work / name.replace(" ", "_").replace(",", "")
        started = time.perf_counter()
        embed_corpus(model_dir, work / "corpus.jsonl", out, shard_rows=args.shard_rows, log=lambda m: None, **kwargs)
        seconds = time.perf_counter() - started
        table = pq.read_table(out)
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        ids = np.array(table.column("id").to_pylist())
        rows.append((name, seconds, float(np.abs(vectors - reference[ids]).max())))

    print(f"\n{docs} documents, {tokens} tokens, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("| run | seconds | docs/s | tokens/s | vs plain encode | max abs diff vs plain |")
    print("|---|---|---|---|---|---|")
    for name, seconds, diff in rows:
        print(
            f"| {name} | {seconds:.1f} | {docs / seconds:.1f} | {tokens / seconds:.0f} | {plain / seconds:.2f}x "
            f"| {diff:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
