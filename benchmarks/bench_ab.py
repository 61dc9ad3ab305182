"""A/B of two converted folders in one process (for example the same checkpoint converted by two versions of this
package, each folder carrying its own code): both models loaded side by side, calls alternating, so that machine noise
hits both alike. Reports `encode` tokens/s (median and range of --repeats) on short and long texts, the best time of
one forward on a short and a long batch, and the max abs difference between the two models' embeddings.

    python benchmarks/bench_ab.py FOLDER_A FOLDER_B [--repeats 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import STSB, WORDS, platform_line, read_stsb  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from transformers import AutoModel

    models = {
        name: AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        for name, path in (("A", args.a), ("B", args.b))
    }
    if STSB.is_dir():
        sentences = [s for a, b, _ in read_stsb() for s in (a, b)][:512]
    else:  # no ../shared/data here: generated sentences of similar length
        sentences = [" ".join(WORDS[i % 7 : i % 7 + 8 + i % 9]) for i in range(512)]
    documents = [" ".join(sentences[i : i + 40]) for i in range(0, 480, 40)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform_line()}")
    print("| measure | A | B | B / A |\n|---|---|---|---|")
    for name, texts in (("encode, 512 STS-B sentences", sentences), ("encode, 12 documents", documents)):
        tokens = sum(len(ids) for ids in models["A"]._tokenize([models["A"].config.prompts["STS"] + t for t in texts]))
        outputs = {k: m.encode(texts, prompt_name="STS", show_progress_bar=False) for k, m in models.items()}
        times = {k: [] for k in models}
        for _ in range(args.repeats):
            for k, m in models.items():
                started = time.perf_counter()
                m.encode(texts, prompt_name="STS", show_progress_bar=False)
                times[k].append(time.perf_counter() - started)
        rate = {k: tokens / statistics.median(v) for k, v in times.items()}
        spread = {k: f"{tokens / max(v):.0f}-{tokens / min(v):.0f}" for k, v in times.items()}
        difference = abs(outputs["A"] - outputs["B"]).max()
        print(
            f"| {name} (tokens/s, median and range; max abs diff {difference:.1e}) | {rate['A']:.0f} ({spread['A']}) "
            f"| {rate['B']:.0f} ({spread['B']}) | {rate['B'] / rate['A']:.3f} |"
        )
    tokenizer = models["A"].tokenizer
    for name, texts, length in (
        ("forward, 256 short texts", sentences[:256], None),
        ("forward, 4 long texts", [" ".join(sentences[:60])] * 4, 1024),
    ):
        batch = tokenizer(texts, padding=True, truncation=length is not None, max_length=length, return_tensors="pt")
        best = {k: float("inf") for k in models}
        with torch.no_grad():
            for _ in range(8):
                for k, m in models.items():
                    started = time.perf_counter()
                    m(**batch)
                    best[k] = min(best[k], time.perf_counter() - started)
        shape = tuple(batch["input_ids"].shape)
        print(
            f"| {name} {shape} (best of 8, ms) | {best['A'] * 1000:.0f} | {best['B'] * 1000:.0f} "
            f"| {best['B'] / best['A']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
