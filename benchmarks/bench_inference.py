"""Inference throughput: our `encode` vs sentence-transformers vs transformers-native (Gemma3TextModel + a manual
head), same weights, same texts, interleaved repeats; tokens/s and texts/s medians, ratios to sentence-transformers,
and agreement (min cosine to sentence-transformers).

    python benchmarks/bench_inference.py [--reference DIR] [--repeats 3] [--smoke]

With --reference (or EMBEDDINGGEMMA_REFERENCE) the real google/embeddinggemma-300m is converted and measured; without
it (or with --smoke) a tiny random model is, which checks the script and measures overheads only.
Workloads: short texts (STS-B-like sentences), 200-1,000-token documents, and a mixed corpus (8-1,040 tokens).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("a man is playing a guitar while the planet mars looks red in the evening sky and a river carries sediment "
         "towards the delta every spring as scientists measure the slow orbit of a distant moon").split()  # fmt: skip


def workload(name: str, count: int, rng) -> list[str]:
    lengths = {"short": (6, 20), "documents": (180, 900), "mixed": (6, 950)}[name]
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(*lengths)))) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=os.environ.get("EMBEDDINGGEMMA_REFERENCE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, Gemma3TextModel

    from convert_checkpoint import convert

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    source = None if args.smoke else args.reference
    if not source:
        from testing_embeddinggemma import build_tiny_sentence_transformer

        source = str(work / "st")
        build_tiny_sentence_transformer(source)
        print("model: a tiny random model (overheads only)")
    ours_dir = convert(source, work / "ours", matryoshka_dims=None if args.reference and not args.smoke else [48],
                       verify_output=False)  # fmt: skip
    st = SentenceTransformer(source, device="cpu")
    ours = AutoModel.from_pretrained(ours_dir, trust_remote_code=True).eval()
    native = Gemma3TextModel.from_pretrained(source, attn_implementation="sdpa").eval()
    dense = [m.linear for m in list(st)[2:] if hasattr(m, "linear")]
    tokenizer = st.tokenizer
    max_length = st.max_seq_length  # 2,048 for the real model

    @torch.no_grad()
    def run_native(texts, batch_size=32):
        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")  # fmt: skip
            hidden = native(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            for layer in dense:
                pooled = layer(pooled)
            outputs.append(F.normalize(pooled, dim=-1))
        return torch.cat(outputs).numpy()

    systems = {
        "sentence-transformers": lambda texts: st.encode(texts, batch_size=32, convert_to_numpy=True),
        "transformers-native": run_native,
        "ours (encode)": lambda texts: ours.encode(texts, batch_size=32),
    }
    rng = np.random.default_rng(0)
    counts = {"short": 8 if args.smoke else 256, "documents": 2 if args.smoke else 24, "mixed": 4 if args.smoke else 64}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("| workload | system | texts/s (median) | tokens/s (median) | range tokens/s | vs ST | min cosine vs ST |")
    print("|---|---|---|---|---|---|---|")
    for name, count in counts.items():
        texts = workload(name, count, rng)
        tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
        times = {system: [] for system in systems}
        vectors = {}
        for _ in range(args.repeats):  # interleaved: each repeat runs every system once
            for system, fn in systems.items():
                started = time.perf_counter()
                vectors[system] = fn(texts)
                times[system].append(time.perf_counter() - started)
        base = statistics.median(times["sentence-transformers"])
        for system in systems:
            median = statistics.median(times[system])
            cosine = (vectors[system] * vectors["sentence-transformers"]).sum(-1).min()
            low, high = tokens / max(times[system]), tokens / min(times[system])
            print(f"| {name} ({count} texts, {tokens} tokens) | {system} | {count / median:.2f} | {tokens / median:.0f} | "
                  f"{low:.0f}-{high:.0f} | {base / median:.2f}x | {cosine:.6f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
