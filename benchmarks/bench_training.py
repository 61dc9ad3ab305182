"""Training throughput of the recipe, one configuration after another, each adding one change to the one before:
training tokens/s (real tokens, padding not counted), seconds per step and the padding share, measured by
`train_embeddinggemma.train` itself (OUTPUT_DIR/training_summary.json, steady state: the first step is left out).

    python benchmarks/bench_training.py [--student DIR --teacher DIR] [--steps 8] [--batch-size 32] [--smoke]
                                        [--configs NAME,...]

The student is a converted folder (e.g. `convert_checkpoint.py --from gemma3 gemma-3-270m.gguf --embedding-dim 768`),
the teacher any embedding folder of the student's embedding dim; the texts are STS-B train sentences (distillation,
the first stage of the recorded experiment), teacher embeddings cached in --cache-dir. Without --student (or with
--smoke) tiny random models are built, which checks the script and measures overheads only.
Configurations (cumulative): baseline = the earlier defaults (float32, gradient checkpointing, token embeddings
trained, random no-duplicate batches); then frozen token embeddings; no gradient checkpointing; batches grouped by
length; bfloat16 mixed precision (only where the CPU has native bf16, else reported as skipped); and the final
configuration with 1 thread instead of all cores.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_inference import platform_line  # noqa: E402

import train_embeddinggemma as te  # noqa: E402


CHANGES = [
    ("baseline (fp32, checkpointing, embeddings trained, random batches)", {}),
    ("+ frozen token embeddings", {"train_embeddings": False}),
    ("+ no gradient checkpointing", {"gradient_checkpointing": False}),
    ("+ batches grouped by length", {"group_by_length": True}),
    ("+ bf16 mixed precision", {"bf16": True}),
]
BASELINE = {"train_embeddings": True, "gradient_checkpointing": True, "group_by_length": False, "bf16": False}


def sentences(count: int) -> list[dict]:
    stsb = REPO.parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
    if stsb.is_file():
        return te.read_texts(stsb)[:count]
    words = "a man is playing a guitar while the red planet rises over the quiet river delta in spring".split()
    return [{"anchor": " ".join(words[: 4 + i % 12]) + f" {i}"} for i in range(count)]


def tiny_models(folder: Path) -> tuple[str, str]:
    """A tiny converted Gemma 3 decoder (student) with the head size of a tiny embedding model (teacher), built as
    the tests build them."""
    from convert_checkpoint import convert
    from testing_embeddinggemma import build_tiny_gemma3, build_tiny_sentence_transformer

    build_tiny_sentence_transformer(folder / "teacher-st")
    teacher = convert(str(folder / "teacher-st"), folder / "teacher", matryoshka_dims=[48, 32, 16])
    build_tiny_gemma3(folder / "decoder")
    student = convert(
        str(folder / "decoder"), folder / "student", "gemma3", embedding_dim=48, matryoshka_dims=[48, 32, 16]
    )
    return str(student), str(teacher)


def run(student, teacher, rows, settings, steps, batch_size, cache, workdir, threads=None) -> dict:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        output = Path(tempfile.mkdtemp(dir=workdir))
        te.train(
            student,
            str(output),
            rows,
            teacher,
            nce_weight=0.0,
            gor_weight=0.0,
            max_steps=steps,
            batch_size=batch_size,
            learning_rate=1e-5,
            query_prompt="STS",
            save_steps=10**6,
            cache_dir=cache,
            logging_steps=10**6,
            **settings,
        )
        summary = json.loads((output / "training_summary.json").read_text())["this_run"]
        shutil.rmtree(output)  # a full model per configuration: ~1 GB each for the 270M student
        return {
            **summary["steady"],
            "padding": 1 - summary["tokens"] / max(summary["padded_tokens"], 1),
            "peak_rss_gb": summary["peak_rss_gb"],
        }
    finally:
        torch.set_num_threads(previous)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student")
    parser.add_argument("--teacher")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--cache-dir", help="teacher-embedding cache (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 4 steps")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        if args.smoke or not args.student:
            student, teacher = tiny_models(Path(workdir))
            steps, batch_size = min(args.steps, 4), min(args.batch_size, 8)
        else:
            if not args.teacher:
                parser.error("--student needs --teacher (distillation targets)")
            student, teacher, steps, batch_size = args.student, args.teacher, args.steps, args.batch_size
        rows = sentences(args.texts)
        cache = args.cache_dir or str(Path(workdir) / "cache")
        print(f"# {platform_line()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
        print(f"# student {student}; {len(rows)} STS-B train sentences, batch {batch_size}, {steps} steps each\n")
        # peak RSS is this process's so far (it never goes down): each row's is at least the rows' above it
        print("| configuration | training tokens/s | s/step | padding | vs baseline | peak RSS (GB) |")
        print("|---|---|---|---|---|---|")
        settings, baseline = dict(BASELINE), None
        for name, change in CHANGES:
            settings.update(change)
            if change.get("bf16") and not te.native_bf16():
                print(f"| {name} | skipped: no native bf16 on this CPU (slower than fp32) | | | | |")
                settings["bf16"] = False
                continue
            figures = run(student, teacher, rows, settings, steps, batch_size, cache, workdir)
            baseline = baseline or figures["tokens_per_second"]
            print(
                f"| {name} | {figures['tokens_per_second']:,.0f} | {figures['seconds_per_step']:.2f} | "
                f"{figures['padding']:.0%} | {figures['tokens_per_second'] / baseline:.2f}x | "
                f"{figures['peak_rss_gb']} |",
                flush=True,
            )
        if torch.get_num_threads() > 1:
            figures = run(student, teacher, rows, settings, steps, batch_size, cache, workdir, threads=1)
            print(
                f"| the last, 1 thread | {figures['tokens_per_second']:,.0f} | {figures['seconds_per_step']:.2f} | "
                f"{figures['padding']:.0%} | {figures['tokens_per_second'] / baseline:.2f}x | "
                f"{figures['peak_rss_gb']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
