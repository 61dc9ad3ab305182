"""Our `encode` in each precision mode against our own float32 `encode`, in one process, repeats interleaved: speed
ratios and minimum cosine, next to the precision probe's figures (what `precision="fastest"` and the
slower-than-float32 warnings decide by).

    python benchmarks/bench_precision.py [--model DIR] [--modes float32,bfloat16,int8,fastest] [--repeats 2]

Workloads: short = 600 STS-B test sentences (../shared/data when present, else generated sentences of 6-20 words),
mixed = 32 texts of 8-1,024 words; both with the STS prompt. --model defaults to EMBEDDINGGEMMA_MODEL (a folder
converted by this package); without one a tiny random model is built (overheads only).
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_inference import STSB, platform_line, probe_line, read_stsb  # noqa: E402


WORDS = (
    "a man is playing a guitar while the planet mars looks red in the evening sky and a river carries sediment "
    "towards the delta every spring as scientists measure the slow orbit of a distant moon"
).split()


def workloads(rng: random.Random) -> dict[str, list[str]]:
    if STSB.is_dir():
        short = [s for a, b, _ in read_stsb() for s in (a, b)][:600]
    else:
        short = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) for _ in range(600)]
    lengths = [8, 16, 32, 64, 128, 256, 512, 1024] * 4
    mixed = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]
    return {"short": short, "mixed": mixed}


def load(folder: str, mode: str):
    from modeling_embeddinggemma import EmbeddingGemmaModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode == "float32":
            model = EmbeddingGemmaModel.from_pretrained(folder)
        else:
            model = EmbeddingGemmaModel.from_pretrained(folder, precision=mode)
    label = mode if mode != "fastest" else f"fastest ({model.precision_choice['precision']})"
    return label, model.eval(), [str(w.message) for w in caught if "slower than float32" in str(w.message)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("EMBEDDINGGEMMA_MODEL"))
    parser.add_argument("--modes", default="float32,bfloat16,int8,fastest")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = args.model
    if folder is None:
        from convert_checkpoint import convert
        from testing_embeddinggemma import build_tiny_sentence_transformer

        root = Path(tempfile.mkdtemp())
        build_tiny_sentence_transformer(root / "st")
        folder = str(convert(str(root / "st"), root / "tiny"))
        print("model: a tiny random model (overheads only)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform_line()}")
    models = {}
    for mode in args.modes.split(","):
        label, model, warned = load(folder, mode)
        models[label] = model
        for message in warned:
            print(f"{label}: warned: {message}")
    print(probe_line(next(iter(models.values())).config))
    texts = workloads(random.Random(0))
    base = next(iter(models))
    print("| workload | mode | seconds (median) | vs float32 | min cosine vs float32 |")
    print("|---|---|---|---|---|")
    for name, batch in texts.items():
        times, vectors = {label: [] for label in models}, {}
        for model in models.values():  # untimed warm-up
            model.encode(batch[:4], prompt_name="STS", show_progress_bar=False)
        for _ in range(args.repeats):
            for label, model in models.items():
                start = time.perf_counter()
                vectors[label] = np.asarray(model.encode(batch, prompt_name="STS", show_progress_bar=False))
                times[label].append(time.perf_counter() - start)
        for label in models:
            seconds = statistics.median(times[label])
            cosine = float((vectors[label] * vectors[base]).sum(-1).min())
            ratio = statistics.median(times[base]) / seconds
            print(f"| {name} | {label} | {seconds:.2f} | {ratio:.2f}x | {cosine:.5f} |")


if __name__ == "__main__":
    main()
