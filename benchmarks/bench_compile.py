"""What `torch.compile` gives on CPU: the model as loaded (eager: the packed path) against `torch.compile(model)`
(the reference path, compiled with dynamic shapes), on the same token-budget batches `encode` makes, with outputs
checked for agreement. Prints the CPU, the threads and tokens/s (median of --repeats, after a warm-up that includes
compilation, whose time is reported separately).

    python benchmarks/bench_compile.py [--reference DIR] [--texts 512] [--repeats 3] [--smoke]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_inference import platform_line, prepare, read_stsb  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=os.environ.get("EMBEDDINGGEMMA_REFERENCE"))
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    from transformers import AutoModel

    from encoding_embeddinggemma import pad_right, token_length_batches

    ctx = prepare(args)
    model = AutoModel.from_pretrained(ctx["ours"], trust_remote_code=True).eval()
    texts = ["a dog", "the red planet mars in the blue sky"] * 8
    if not args.smoke and read_stsb.__globals__["STSB"].is_dir():
        texts = [s for a, b, _ in read_stsb() for s in (a, b)][: args.texts]
    ids = model._tokenize([model.config.prompts["STS"] + t for t in texts])
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    sizes = token_length_batches([len(ids[i]) for i in order], None, 4096)
    batches, start = [], 0
    for size in sizes:
        batches.append(pad_right([ids[i] for i in order[start : start + size]], 0))
        start += size
    tokens = sum(len(i) for i in ids)
    compiled = torch.compile(model, dynamic=True)
    results, outputs = {}, {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform_line()}")
    for name, run in (("eager (packed path)", model), ("torch.compile (reference path)", compiled)):
        with torch.no_grad():
            started = time.perf_counter()
            outputs[name] = [run(input_ids=i, attention_mask=m).sentence_embedding for i, m in batches]
            warm = time.perf_counter() - started
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for i, m in batches:
                    run(input_ids=i, attention_mask=m)
                times.append(time.perf_counter() - started)
        results[name] = (tokens / statistics.median(times), warm)
    base = results["eager (packed path)"][0]
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(outputs["eager (packed path)"], outputs["torch.compile (reference path)"])
    )
    print(f"{len(texts)} texts, {tokens} tokens, {len(batches)} batches; max abs difference {difference:.1e}")
    print("| mode | tokens/s (median) | vs eager | first pass incl. compilation (s) |\n|---|---|---|---|")
    for name, (rate, warm) in results.items():
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {warm:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
