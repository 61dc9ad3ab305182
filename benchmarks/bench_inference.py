"""Inference throughput, same weights and texts, repeats interleaved: our `encode` (fast path, its steps one by one,
int8) vs sentence-transformers vs transformers-native (Gemma3TextModel + a manual head) vs ONNX Runtime fp32, with
tokens/s and texts/s medians and ranges, ratios to sentence-transformers, agreement (min cosine to
sentence-transformers; max abs difference of our fast path to our reference path), and the fp32 GEMM ceiling (the
linear layers alone on the real tokens) so that the distance to the machine's limit is a number.

    python benchmarks/bench_inference.py [--reference DIR] [--repeats 3] [--smoke] [--workloads short,documents,mixed]
                                         [--systems NAME,...] [--rss] [--sts] [--plot FILE.svg]

With --reference (or EMBEDDINGGEMMA_REFERENCE) the real google/embeddinggemma-300m is measured; without it (or with
--smoke) a tiny random model is, which checks the script and measures overheads only.
Workloads: short = STS-B test sentences (../shared/data when present, else generated sentences), documents =
250-1,300 tokens, mixed = 8-1,040 tokens. --rss loads each system in a fresh process and reports its load time and
peak RSS on the mixed workload. --sts reports STS-B test Spearman (STS prompt) at 768 and 256 dims for float32 and
each int8 variant.
"""

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STSB = REPO.parent / "shared" / "data" / "stsbenchmark"

WORDS = (
    "a man is playing a guitar while the planet mars looks red in the evening sky and a river carries sediment "
    "towards the delta every spring as scientists measure the slow orbit of a distant moon"
).split()


def read_stsb(split: str = "test") -> list[tuple[str, str, float]]:
    path = STSB / f"sts-{split}.csv"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 7:
            rows.append((fields[5], fields[6], float(fields[4])))
    return rows


def workload(name: str, count: int, tokenizer, rng) -> list[str]:
    """`count` texts whose token lengths (with <bos>/<eos>) fall in the workload's range."""
    if name == "short" and STSB.is_dir():
        sentences = [s for a, b, _ in read_stsb() for s in (a, b)]
        return sentences[:count]
    sentences = [s for a, b, _ in read_stsb("train") for s in (a, b)] if STSB.is_dir() else None
    low, high = {"short": (8, 40), "documents": (250, 1300), "mixed": (8, 1040)}[name]
    texts = []
    for _ in range(count):
        target = int(rng.integers(low, high))
        pieces, length = [], 2
        while length < target:
            piece = str(rng.choice(sentences)) if sentences else " ".join(rng.choice(WORDS, size=8))
            pieces.append(piece)
            length += len(tokenizer(piece, add_special_tokens=False)["input_ids"]) + 1
        texts.append(" ".join(pieces))
    return texts


def gemm_ceiling(model, tokens: int = 4096, repeats: int = 3) -> dict:
    """Tokens/s of the encoder's linear layers alone at `tokens` rows, per dtype: float32 with torch's default product
    (`F.linear`) and with the model's own in inference (oneDNN, packed weights: `EmbeddingGemmaLinear`), bfloat16
    (`F.linear` on bfloat16 weights and inputs: oneDNN's native kernels where the CPU has AVX512_BF16/AMX, emulated
    elsewhere) and int8 (`Int8Linear`: the product with its input's rotation and per-token quantization). No path
    of a dtype beats its ceiling."""
    linears = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(tokens, m.in_features) for m in linears}
    bf16_inputs = {k: v.bfloat16() for k, v in inputs.items()}
    bf16_weights = {id(m): m.weight.detach().bfloat16() for m in linears}
    products = [
        ("fp32 torch default", lambda m, x: F.linear(x, m.weight)),
        ("fp32 oneDNN", lambda m, x: m._onednn_forward(x)),
        ("bf16", lambda m, x: F.linear(bf16_inputs[m.in_features], bf16_weights[id(m)])),
    ]
    quantization = sys.modules[type(model).__module__.replace("modeling_", "quantization_")]
    if quantization.int8_products_available() is None:
        levels, activation_levels = quantization.int8_levels()
        with torch.no_grad():
            int8 = {
                id(m): quantization.Int8Linear(m.weight, None, levels, 32, activation_levels=activation_levels)
                for m in linears
            }
        products.append(("int8 (oneDNN, with per-token quantization and rotation)", lambda m, x: int8[id(m)](x)))
    rates = {}
    with torch.no_grad():
        for name, product in products:
            for m in linears:  # warm-up (and packing)
                product(m, inputs[m.in_features])
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for m in linears:
                    product(m, inputs[m.in_features])
                best = min(best, time.perf_counter() - started)
            rates[name] = tokens / best
    return rates


# ----------------------------------------------------------------------------------------------------------------
# Systems: name -> loader returning an encode function texts -> (n, dim) float32 unit vectors
# ----------------------------------------------------------------------------------------------------------------


def load_sentence_transformers(ctx):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(ctx["source"], device="cpu")
    return lambda texts: model.encode(texts, batch_size=32, convert_to_numpy=True)


def load_native(ctx):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Gemma3TextModel

    native = Gemma3TextModel.from_pretrained(ctx["source"], attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(ctx["source"])
    dense = []
    for folder in sorted(Path(ctx["source"]).glob("[0-9]*_Dense")):
        dense.append(load_file(str(folder / "model.safetensors"))["linear.weight"])

    @torch.no_grad()
    def run(texts, batch_size=32):
        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=ctx["max_length"],
                return_tensors="pt",
            )
            hidden = native(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            for weight in dense:
                pooled = pooled @ weight.T
            outputs.append(F.normalize(pooled, dim=-1))
        return torch.cat(outputs).numpy()

    return run


def load_ours(ctx, quantize=None, options=None, fast=True, batch_size=None, max_batch_tokens=None, dtype=torch.float32):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(ctx["ours"], trust_remote_code=True, dtype=dtype).eval()
    model.config.use_packed_path = fast
    if quantize:
        quantization = sys.modules[type(model).__module__.replace("modeling_", "quantization_")]
        with warnings.catch_warnings():  # the AMX advice: the benchmark measures int8 anyway
            warnings.simplefilter("ignore")
            quantization.quantize_int8(model, **(options or {}))
    return lambda texts: model.encode(
        texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens, show_progress_bar=False
    )


def exports(ctx) -> Path:
    """The converter's own exports of the measured model (what users download): onnx/ (float32 and int8) and GGUF
    f16 / q8_0, made once per run (--to onnx,gguf, verification left to the tests: the table's cosines show it)."""
    from convert_checkpoint import convert
    from embeddinggemma_tools.convert.export import llama_cpp_available

    folder = Path(ctx["work"]) / "exports"
    if not folder.exists():
        targets = ["onnx"] + (["gguf"] if llama_cpp_available() else [])
        gguf_types = ["f16", "q8_0"] if "gguf" in targets else None
        convert(ctx["ours"], folder, "embeddinggemma", to=targets, gguf_types=gguf_types, verify_output=False)
    return folder


def load_onnx(ctx, file="model.onnx"):
    """ONNX Runtime on `convert_checkpoint.py --to onnx`'s file, batches of 32 sorted by token length, as a careful
    ONNX user would run it."""
    import onnxruntime
    from transformers import AutoTokenizer

    path = exports(ctx) / "onnx" / file
    tokenizer = AutoTokenizer.from_pretrained(ctx["ours"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(texts, batch_size=32):
        ids = tokenizer(texts, truncation=True, max_length=ctx["max_length"])["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        output = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = max(len(ids[i]) for i in rows)
            input_ids = np.zeros((len(rows), length), dtype=np.int64)
            attention_mask = np.zeros((len(rows), length), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])], attention_mask[r, : len(ids[i])] = ids[i], 1
            (result,) = session.run(["sentence_embedding"], {"input_ids": input_ids, "attention_mask": attention_mask})
            if output is None:
                output = np.empty((len(texts), result.shape[1]), dtype=np.float32)
            output[rows] = result
        return output

    return run


def load_llama_cpp(ctx, gguf_type):
    """llama.cpp (its Python bindings) on the converter's GGUF file: flash attention, texts packed into 2,048-token
    batches (or the model's maximum length, if shorter), the output L2-normalised (llama.cpp returns the head's raw
    output)."""
    import llama_cpp

    from embeddinggemma_tools.convert.export import gguf_file_name

    tokens = min(2048, ctx["max_length"])  # as many as the model takes, so that long texts are cut where ours are
    llm = llama_cpp.Llama(
        model_path=str(exports(ctx) / gguf_file_name("exports", gguf_type)),
        embedding=True,
        n_ctx=tokens,
        n_batch=tokens,
        n_ubatch=tokens,
        n_threads=torch.get_num_threads(),
        flash_attn=True,
        verbose=False,
    )

    def run(texts):
        vectors = np.asarray(llm.embed(texts, normalize=False, truncate=True), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return run


SYSTEMS = {
    "sentence-transformers": load_sentence_transformers,
    "transformers-native": load_native,
    "onnxruntime fp32": load_onnx,
    "onnxruntime int8 (model_quantized.onnx)": lambda ctx: load_onnx(ctx, "model_quantized.onnx"),
    "llama.cpp f16 (flash attention; 2048-token batches)": lambda ctx: load_llama_cpp(ctx, "f16"),
    "llama.cpp q8_0 (flash attention; 2048-token batches)": lambda ctx: load_llama_cpp(ctx, "q8_0"),
    "ours: token sort only (reference path; 32/batch)": lambda ctx: load_ours(ctx, fast=False, batch_size=32),
    "ours: + fast path (32/batch)": lambda ctx: load_ours(ctx, batch_size=32),
    "ours (encode defaults: + token budget)": load_ours,
    "ours bf16 (encode defaults)": lambda ctx: load_ours(ctx, dtype=torch.bfloat16),
    "ours int8 (encode defaults)": lambda ctx: load_ours(ctx, quantize="int8"),
    "ours int8 (nearest rounding; no rotation)": lambda ctx: load_ours(
        ctx, quantize="int8", options={"rotation": 0, "rounding": "nearest"}
    ),
}
INT8 = "ours int8 (encode defaults)"
BASELINE = "sentence-transformers"
FAST = "ours (encode defaults: + token budget)"
REFERENCE_PATH = "ours: token sort only (reference path; 32/batch)"


def prepare(args) -> dict:
    from convert_checkpoint import convert

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models and exports: gigabytes with --reference
    source = None if args.smoke else args.reference
    if not source:
        from testing_embeddinggemma import build_tiny_sentence_transformer

        source = str(work / "st")
        build_tiny_sentence_transformer(
            source, dense_out_features=[128, 64]
        )  # ends at the hidden size, as llama.cpp needs
    smoke = not args.reference or args.smoke
    ours = convert(source, work / "ours", matryoshka_dims=[64] if smoke else None, verify_output=False)
    max_length = json.loads((Path(ours) / "config.json").read_text())["max_position_embeddings"]
    return {"source": str(source), "ours": str(ours), "work": str(work), "smoke": smoke, "max_length": max_length}


def child(args) -> int:
    """--rss: one system in a fresh process: load time, one encode of the mixed workload, peak RSS."""
    ctx = json.loads(args.child_context)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx["ours"], trust_remote_code=True)
    texts = workload("mixed", ctx["count"], tokenizer, np.random.default_rng(0))
    started = time.perf_counter()
    encode = SYSTEMS[args.child](ctx)
    loaded = time.perf_counter() - started
    encode(texts)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    hwm = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    peak_mib = (hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    print(json.dumps({"load_s": loaded, "peak_rss_mib": peak_mib}))
    return 0


def spearman_sts(first: np.ndarray, second: np.ndarray, gold: list[float], dims=(768, 256)) -> dict:
    from scipy.stats import spearmanr

    scores = {}
    for dim in dims:
        a = F.normalize(torch.from_numpy(first[:, :dim]), dim=-1)
        b = F.normalize(torch.from_numpy(second[:, :dim]), dim=-1)
        scores[dim] = 100 * spearmanr((a * b).sum(-1).numpy(), gold).statistic
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=os.environ.get("EMBEDDINGGEMMA_REFERENCE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--workloads", default="short,documents,mixed")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated names (default: all)")
    parser.add_argument(
        "--rss", action="store_true", help="also load time and peak RSS per system, each in a new process"
    )
    parser.add_argument("--sts", action="store_true", help="also STS-B Spearman for float32 and the int8 variants")
    parser.add_argument("--plot", help="also tokens/s against text length for every system, drawn to this SVG file")
    parser.add_argument("--lengths", default="16,64,256,1024,2048", help="text lengths (tokens) for --plot")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-context", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; expected some of {list(SYSTEMS)}")
    ctx = prepare(args)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    from embeddinggemma_tools.convert.export import _importable, llama_cpp_available

    if not all(_importable(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        names = [n for n in names if not n.startswith("onnxruntime")]
        print(
            "onnx/onnxscript/onnxruntime are not installed: pip install 'embeddinggemma[onnx]' to include ONNX Runtime"
        )
    if not llama_cpp_available():
        names = [n for n in names if not n.startswith("llama.cpp")]
        print("llama.cpp's Python bindings are not installed: bash scripts/install_llama_cpp.sh .venv to include them")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    encoders = {name: SYSTEMS[name](ctx) for name in names} if workloads else {}

    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx["ours"], trust_remote_code=True)
    reference_model = AutoModel.from_pretrained(ctx["ours"], trust_remote_code=True).eval()
    print(f"model: {'a tiny random model (overheads only)' if ctx['smoke'] else ctx['source']}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform_line()}")
    ceiling = gemm_ceiling(reference_model)
    print(probe_line(reference_model.config))
    del reference_model
    rng = np.random.default_rng(0)
    counts = {"short": 16, "documents": 3, "mixed": 6} if ctx["smoke"] else {"short": 512, "documents": 10, "mixed": 24}
    print(
        "GEMM ceilings (the encoder's linear layers alone, 4,096 rows): "
        + ", ".join(f"{name} {rate:.0f} tokens/s" for name, rate in ceiling.items())
    )
    ceilings = {
        "fp32": max(rate for name, rate in ceiling.items() if name.startswith("fp32")),
        **{kind: rate for name, rate in ceiling.items() for kind in ("bf16", "int8") if name.startswith(kind)},
    }
    print()
    print(
        "| workload | system | texts/s (median) | tokens/s (median) | range tokens/s | vs ST | min cosine vs ST | "
        "max abs vs ours reference path |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in workloads:
        count = counts[name]
        texts = workload(name, count, tokenizer, rng)
        tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=ctx["max_length"])["input_ids"])
        times = {system: [] for system in names}
        vectors = {}
        for system in names:  # warm-up, not timed: first-call costs (weight packing, page faults, kernel choice)
            encoders[system](texts[:4])
        for _ in range(args.repeats):  # interleaved: each repeat runs every system once
            for system in names:
                started = time.perf_counter()
                vectors[system] = encoders[system](texts)
                times[system].append(time.perf_counter() - started)
        base = statistics.median(times[BASELINE])
        label = f"{name} ({count} texts, {tokens} tokens)"
        for system in names:
            median = statistics.median(times[system])
            cosine = (vectors[system] * vectors[BASELINE]).sum(-1).min()
            exact = ""
            exact_system = system.startswith("ours") and not any(kind in system for kind in ("int8", "bf16"))
            if REFERENCE_PATH in vectors and exact_system:
                exact = f"{np.abs(vectors[system] - vectors[REFERENCE_PATH]).max():.1e}"
            low, high = tokens / max(times[system]), tokens / min(times[system])
            print(
                f"| {label} | {system} | {count / median:.2f} | {tokens / median:.0f} | {low:.0f}-{high:.0f} | "
                f"{base / median:.2f}x | {cosine:.6f} | {exact} |"
            )
        for kind, rate in ceilings.items():
            print(
                f"| {label} | {kind} GEMM ceiling (linear layers only, 4,096 rows) | | {rate:.0f} | | "
                f"{rate / (tokens / base):.2f}x | | |"
            )

    if args.plot:
        lengths = [int(n) for n in args.lengths.split(",")]
        rates = length_sweep(encoders, names, lengths, tokenizer, ctx, args.repeats, rng)
        print("\n| system | " + " | ".join(f"{n} tokens" for n in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for system in names:
            print(f"| {system} | " + " | ".join(f"{rate:.0f}" for rate in rates[system]) + " |")
        title = f"tokens/s by text length, {torch.get_num_threads()} threads\n{platform_line().split(';')[0]}"
        Path(args.plot).write_text(line_plot_svg(lengths, rates, title), encoding="utf-8")
        print(f"plot: {args.plot}")

    if args.rss:
        print("\n| system | load time (s) | peak RSS (MiB), load + one mixed-workload encode |\n|---|---|---|")
        context = json.dumps({**ctx, "count": counts["mixed"]})
        for system in names:
            result = subprocess.run(
                [sys.executable, __file__, "--child", system, "--child-context", context],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                print(f"| {system} | failed: {result.stderr.strip().splitlines()[-1:]} | |")
                continue
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {system} | {figures['load_s']:.1f} | {figures['peak_rss_mib']:.0f} |")

    if args.sts:
        if not STSB.is_dir():
            print("\n--sts needs ../shared/data/stsbenchmark")
        else:
            print(
                "\n| system | STS-B test Spearman @768 | @256 | min cosine vs fp32 | mean cosine vs fp32 |"
                "\n|---|---|---|---|---|"
            )
            prompt = "task: sentence similarity | query: "
            rows = read_stsb("test")
            sentences = [prompt + s for a, b, _ in rows for s in (a, b)]
            base_vectors = None
            for system in [FAST, "ours bf16 (encode defaults)", INT8, "ours int8 (nearest rounding; no rotation)"]:
                vectors = (encoders.get(system) or SYSTEMS[system](ctx))(sentences)
                scores = spearman_sts(vectors[0::2], vectors[1::2], [gold for _, _, gold in rows])
                base_vectors = vectors if base_vectors is None else base_vectors
                cosine = (vectors * base_vectors).sum(-1)
                print(
                    f"| {system} | {scores[768]:.2f} | {scores[256]:.2f} | {cosine.min():.5f} | {cosine.mean():.5f} |"
                )
    return 0


def length_sweep(encoders, names, lengths, tokenizer, ctx, repeats, rng) -> dict[str, list[float]]:
    """Tokens/s of each system on texts of each length (about 4,096 tokens of texts of that length; fewer with the
    tiny model), repeats interleaved, medians."""
    rates = {system: [] for system in names}
    for length in lengths:
        length = min(length, ctx["max_length"])
        count = max(1, (256 if ctx["smoke"] else 4096) // length)
        texts = [text_of_length(length, tokenizer, rng) for _ in range(count)]
        times = {system: [] for system in names}
        for system in names:
            encoders[system](texts[:1])
        for _ in range(repeats):
            for system in names:
                started = time.perf_counter()
                encoders[system](texts)
                times[system].append(time.perf_counter() - started)
        for system in names:
            rates[system].append(count * length / statistics.median(times[system]))
    return rates


def text_of_length(length: int, tokenizer, rng) -> str:
    """A text of `length` tokens with <bos>/<eos> (STS-B train sentences when present, else generated words)."""
    sentences = [s for a, b, _ in read_stsb("train") for s in (a, b)] if STSB.is_dir() else None
    ids = []
    while len(ids) < length - 2:
        piece = str(rng.choice(sentences)) if sentences else " ".join(rng.choice(WORDS, size=8))
        ids += tokenizer(" " + piece, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: length - 2])


def line_plot_svg(lengths: list[int], rates: dict[str, list[float]], title: str, width=720, height=400) -> str:
    """A log-x line plot of tokens/s against text length, one line per system, as SVG (no plotting library)."""
    import math

    left, right, top, bottom = 60, 250, 40, 40
    top_rate = max(max(r) for r in rates.values()) * 1.05

    def x(n):
        span = math.log(max(lengths)) - math.log(min(lengths)) or 1.0
        return left + (math.log(n) - math.log(min(lengths))) / span * (width - left - right)

    def y(rate):
        return height - bottom - rate / top_rate * (height - top - bottom)

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        *(
            f'<text x="{left}" y="{14 + 13 * i}" font-size="11">{line}</text>'
            for i, line in enumerate(title.split("\n"))
        ),
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">text length (tokens)</text>',
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
        'text-anchor="middle">tokens/s</text>',
    ]
    for n in lengths:
        out.append(f'<text x="{x(n):.1f}" y="{height - bottom + 14}" text-anchor="middle">{n}</text>')
    for i in range(5):
        rate = top_rate * i / 4
        out.append(f'<text x="{left - 4}" y="{y(rate) + 4:.1f}" text-anchor="end">{rate:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y(rate):.1f}" x2="{width - right}" y2="{y(rate):.1f}" stroke="#ddd"/>')
    for i, (system, values) in enumerate(rates.items()):
        colour = colours[i % len(colours)]
        points = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in zip(lengths, values))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        label_y = top + 14 * i
        out.append(
            f'<line x1="{width - right + 10}" y1="{label_y}" x2="{width - right + 30}" y2="{label_y}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        name = system.replace("&", "&amp;").replace("<", "&lt;")
        out.append(f'<text x="{width - right + 34}" y="{label_y + 4}">{name[:36]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)


def probe_line(config) -> str:
    """The precision probe's figures (what `precision="fastest"` and the slower-than-float32 warnings decide by),
    measured afresh, and the mode it picks."""
    import precision_embeddinggemma as precision

    figures = precision.measure_products(config, use_cache=False)
    best, _ = precision.fastest_precision(config)
    parts = [
        f"{mode} "
        + " / ".join(f"{rate:.0f}" for rate in rates.values())
        + (f" ({precision.speedup(figures, mode):.2f}x fp32)" if mode != "float32" else "")
        for mode, rates in figures.items()
    ]
    tokens = " / ".join(map(str, precision.PROBE_TOKENS))
    return f"precision probe (GFLOP/s at {tokens} tokens): " + ", ".join(parts) + f"; precision='fastest' picks {best}"


def platform_line() -> str:
    """The CPU, the instruction-set flags that decide which kernels run (AVX2, AVX-512, VNNI, bf16, AMX), and the
    library versions: every figure is printed with it."""
    import platform

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        flags = set(next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split())
    isa = " ".join(f for f in CPU_FLAGS if f in flags) or "flags unknown"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:  # oneDNN uses no newer instructions than this: an older CPU's kernels on this one
        isa += f"; oneDNN capped at {cap.upper()}"
    versions = []
    for name in ("transformers", "sentence_transformers", "onnxruntime", "llama_cpp"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except Exception:
            pass
    return f"{model} [{isa}]; {', '.join(versions)}"


if __name__ == "__main__":
    sys.exit(main())
