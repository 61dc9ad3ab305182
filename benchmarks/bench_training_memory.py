"""Peak resident memory of a training process under each memory allocator: the same `train_embeddinggemma.py train`
command run once per allocator, each in a process of its own (a process's peak never goes down, so configurations
cannot share one), with its peak RSS, seconds per step and training tokens/s from OUTPUT_DIR/training_summary.json.

    python benchmarks/bench_training_memory.py --student DIR --teacher DIR [--steps 30] [--allocators glibc,jemalloc]
        [-- TRAIN_ARGUMENTS ...]

TRAIN_ARGUMENTS are `train` flags after the student and output folders (default: distillation of STS-B train
sentences under the STS prompt, batch 64); `--max-steps`, `--save-steps` and `--logging-steps` are set here. Give
`--cache-dir` among them to reuse a run's teacher cache. Allocators:
- glibc: the default, with training's malloc_trim every 10 steps and after each evaluation
  (`release_freed_memory`);
- glibc-no-trim: glibc without it (EMBEDDINGGEMMA_MALLOC_TRIM=0), as training ran before it;
- glibc-thresholds: glibc returning freed memory at once (MALLOC_TRIM_THRESHOLD_=0, MALLOC_MMAP_THRESHOLD_=1 MiB:
  large blocks mapped and unmapped per use), without the malloc_trim;
- jemalloc: LD_PRELOAD of libjemalloc (Debian's libjemalloc2), skipped where it is not installed;
- tcmalloc: LD_PRELOAD of libtcmalloc_minimal (libtcmalloc-minimal4), skipped where it is not installed.
Without --student (or with --smoke) tiny random models are built: a check of the script, not a measurement.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_inference import platform_line  # noqa: E402


def library(pattern: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/*/{pattern}") + glob.glob(f"/usr/lib/{pattern}"))
    return found[0] if found else None


def allocator_environment(name: str) -> dict[str, str] | None:
    """The environment variables that select `name`, or None where it is not installed."""
    if name == "glibc":
        return {}
    if name == "glibc-no-trim":
        return {"EMBEDDINGGEMMA_MALLOC_TRIM": "0"}
    if name == "glibc-thresholds":
        return {
            "EMBEDDINGGEMMA_MALLOC_TRIM": "0",
            "MALLOC_TRIM_THRESHOLD_": "0",
            "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
        }
    preload = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}.get(name)
    if preload is None:
        raise ValueError(
            f"unknown allocator {name!r}: expected glibc, glibc-no-trim, glibc-thresholds, jemalloc or tcmalloc"
        )
    path = library(preload)
    return {"LD_PRELOAD": path} if path else None


def run(name, student, output, train_arguments, steps) -> dict | str:
    environment = allocator_environment(name)
    if environment is None:
        return "not installed"
    command = [sys.executable, str(REPO / "train_embeddinggemma.py"), "train", student, str(output)]
    command += [*train_arguments, "--max-steps", str(steps), "--save-steps", str(10**6), "--logging-steps", "1000000"]
    result = subprocess.run(command, env={**os.environ, **environment}, capture_output=True, text=True)
    if result.returncode != 0:
        return f"failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
    summary = json.loads((output / "training_summary.json").read_text())["this_run"]
    return {"peak_rss_gb": summary["peak_rss_gb"], **summary["steady"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_arguments = argv[argv.index("--") + 1 :] if "--" in argv else None
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student")
    parser.add_argument("--teacher")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--allocators", default="glibc,glibc-no-trim,jemalloc")
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 3 steps")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        student, teacher, steps = args.student, args.teacher, args.steps
        if args.smoke or not student:
            from bench_training import tiny_models

            student, teacher = tiny_models(Path(workdir))
            steps = min(steps, 3)
        elif not teacher:
            parser.error("--student needs --teacher (distillation targets)")
        if train_arguments is None:  # STS-B train sentences; for the smoke run, 64 made-up ones
            stsb = REPO.parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
            data = f"texts:{stsb}"
            if args.smoke or not args.student or not stsb.is_file():
                words = "a man is playing a guitar while the red planet rises over the quiet river".split()
                rows = [{"anchor": " ".join(words[: 4 + i % 10]) + f" {i}"} for i in range(64)]
                data = str(Path(workdir) / "texts.jsonl")
                Path(data).write_text("".join(json.dumps(row) + "\n" for row in rows))
            train_arguments = ["--data", data, "--nce-weight", "0", "--gor-weight", "0", "--text-prompt", "STS"]
            train_arguments += ["--batch-size", "64" if args.student and not args.smoke else "8"]
        train_arguments = ["--teacher", teacher, *train_arguments]
        print(f"# {platform_line()}; {os.cpu_count()} CPUs")
        print(f"# student {student}; {steps} steps each; train arguments: {' '.join(train_arguments)}\n")
        print("| allocator | peak RSS (GB) | s/step | training tokens/s |")
        print("|---|---|---|---|")
        for name in args.allocators.split(","):
            figures = run(name, student, Path(workdir) / f"run-{name}", train_arguments, steps)
            if isinstance(figures, str):
                print(f"| {name} | {figures} | | |", flush=True)
                continue
            print(
                f"| {name} | {figures['peak_rss_gb']} | {figures.get('seconds_per_step', float('nan')):.2f} | "
                f"{figures.get('tokens_per_second', float('nan')):,.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
