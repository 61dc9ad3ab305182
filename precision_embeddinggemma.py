# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Which precision runs fastest on this machine, measured rather than read from CPU flags.

CPU flags say what a processor can decode, not what runs fast on it: one Xeon VM lists AVX512_BF16 but multiplies
bfloat16 no faster than float32, so a bfloat16 model there only pays its conversions. `measure_products` times the
products each mode runs (float32 on oneDNN with packed weights, bfloat16, and this package's `Int8Linear`) at the
model's own shapes, on two token counts (a short batch and a long text), in well under a second; the figures are
cached per process and, per CPU model, torch version, thread count and shapes, in the user's cache folder
(`$EMBEDDINGGEMMA_CACHE`, default `~/.cache/embeddinggemma/`).

Users meet it three ways (docs/usage.md, "Which mode for your CPU"):
- `dtype=torch.bfloat16` or `quantize="int8"` that measures slower than float32 still runs as asked, but warns once
  with the measured ratio and the faster choice (`warn_if_slower`);
- `from_pretrained(..., precision="fastest")` picks the fastest mode whose agreement with float32 is known to keep
  min cosine >= 0.999 (`fastest_precision`);
- training turns bfloat16 autocast on by default only where this probe says bfloat16 products are faster.

The flag checks (`cpu_has_native_bf16`, `cpu_has_vnni`, `cpu_has_amx`) live here too: they decide which modes are
possible at all (emulated bfloat16, int8 codes safe from AVX2 saturation); the probe decides which is fast.
"""

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


PRECISIONS = ("float32", "bfloat16", "int8")
# Token counts the probe times each product at: a batch of short texts, and one long text.
PROBE_TOKENS = (64, 512)
# A mode must be at least this much faster than float32 (worst token count) for "fastest" to pick it: below that the
# difference is within the probe's noise, and float32 is exact.
FASTEST_MARGIN = 1.1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return frozenset(word for line in handle if line.startswith(("flags", "Features")) for word in line.split())
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe is not None and probe())
    except Exception:
        return False


def onednn_isa_cap() -> str:
    """oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA, e.g. AVX2), upper case; "" when unset.
    oneDNN then uses no newer instructions than that, and the checks below follow it."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()


# Caps under which oneDNN uses no VNNI / native bfloat16 / AMX instructions.
_CAPS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
_CAPS_WITHOUT_BF16 = _CAPS_WITHOUT_VNNI | {"AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU decodes bfloat16 products (x86 AVX512_BF16 or AMX-BF16; Arm BF16). Without it they are
    emulated and run several times slower than float32. With it they may still be no faster: `measure_products`."""
    if onednn_isa_cap() in _CAPS_WITHOUT_BF16:
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_arm_sve_bf16_supported")
    return any(_probe(name) for name in probes) or bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later)."""
    cap = onednn_isa_cap()
    if cap and "AMX" not in cap and cap != "ALL":
        return False
    return _probe("_is_amx_tile_supported") or "amx_bf16" in cpu_flags()


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512_VNNI or AVX_VNNI): u8 x s8 products accumulate in 32 bits, so full-range
    8-bit codes are safe. Without it (AVX2 alone) oneDNN's pair sums are 16-bit and saturate on them."""
    if onednn_isa_cap() in _CAPS_WITHOUT_VNNI:
        return False
    return _probe("_is_vnni_supported") or bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def product_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of the four products of an encoder layer, as the packed path and int8 run them (q/k/v and gate/up
    fused)."""
    hidden, heads, kv_heads, head_dim = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    return [
        (hidden, (heads + 2 * kv_heads) * head_dim),
        (heads * head_dim, hidden),
        (hidden, 2 * config.intermediate_size),
        (config.intermediate_size, hidden),
    ]


def cache_folder() -> Path:
    return Path(os.environ.get("EMBEDDINGGEMMA_CACHE") or Path.home() / ".cache" / "embeddinggemma")


def _cache_key(shapes) -> str:
    facts = {
        "cpu": cpu_model_name(),
        "flags": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16],
        "isa_cap": onednn_isa_cap(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shapes": [list(shape) for shape in shapes],
        "tokens": list(PROBE_TOKENS),
        "version": 2,  # 2: bfloat16 timed on oneDNN's packed weights, as the packed path now runs it
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _best_time(run, budget_s: float) -> float:
    """The fastest of a few runs of `run()` after one warm-up, stopping once `budget_s` is spent (at least 2 runs)."""
    run()
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < 2 or (runs < 5 and time.perf_counter() - start < budget_s):
        begin = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - begin)
        runs += 1
    return best


@torch.no_grad()
def _time_products(shapes, modes) -> dict:
    """{mode: {tokens: GFLOP/s}} of the model's products in each mode, with random data (speed does not depend on
    the values)."""
    try:
        from .quantization_embeddinggemma import DEFAULT_ROTATION, Int8Linear, int8_products_available
    except ImportError:
        from quantization_embeddinggemma import DEFAULT_ROTATION, Int8Linear, int8_products_available

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(out, inp, generator=generator) * inp**-0.5 for inp, out in shapes]
    onednn = hasattr(torch.ops, "mkldnn") and torch.backends.mkldnn.is_available()

    def products(dtype):
        """The products as the packed path runs them in `dtype`: oneDNN with each weight packed once (F.linear where
        this build cannot), on inputs already in `dtype` (the model's activations are)."""
        typed = [w.to(dtype) for w in weights]
        try:
            if not onednn:
                raise RuntimeError("no oneDNN")
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in typed]
            return lambda x: [
                torch.ops.mkldnn._linear_pointwise(x[i], p, None, "none", [], "") for i, p in enumerate(packed)
            ]
        except RuntimeError:  # the packed path falls back to F.linear too
            return lambda x: [F.linear(x[i], w) for i, w in enumerate(typed)]

    runners = {}
    for mode, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        if mode in modes:
            runners[mode] = (products(dtype), dtype)
    if "int8" in modes and int8_products_available() is None:  # (it tries one product and says why it cannot)
        linears = [
            Int8Linear(w, None, rotation=DEFAULT_ROTATION if w.shape[1] % DEFAULT_ROTATION == 0 else 0) for w in weights
        ]
        runners["int8"] = (lambda x: [linear(x[i]) for i, linear in enumerate(linears)], torch.float32)
    figures = {}
    for tokens in PROBE_TOKENS:
        inputs = [torch.randn(tokens, inp, generator=generator) for inp, _ in shapes]
        flops = sum(2 * tokens * inp * out for inp, out in shapes)
        for mode, (runner, dtype) in runners.items():
            typed = [x.to(dtype) for x in inputs]
            try:
                seconds = _best_time(lambda run=runner, x=typed: run(x), budget_s=0.05)
            except RuntimeError:  # a mode this build or CPU cannot run is left out, never an error in a forward
                continue
            rate = flops / seconds / 1e9
            # three significant digits: a slow mode on tiny shapes under load must not round to 0 GFLOP/s
            figures.setdefault(mode, {})[str(tokens)] = float(f"{rate:.3g}")
    return figures


_measured: dict[str, dict] = {}


def measure_products(config, modes=PRECISIONS, use_cache: bool = True) -> dict:
    """GFLOP/s of this model's products per mode and token count on this machine: {mode: {"64": x, "512": y}}.
    Measured once per process and cached on disk per CPU model, torch version, thread count and shapes; a mode this
    machine cannot run (int8 without oneDNN's int8 products) is absent."""
    shapes = product_shapes(config)
    key = _cache_key(shapes)
    if key in _measured:
        return _measured[key]
    path = cache_folder() / f"precision-probe-{key}.json"
    figures = None
    if use_cache:
        try:
            figures = json.loads(path.read_text())["figures"]
            if not isinstance(figures, dict) or not all(isinstance(v, dict) for v in figures.values()):
                figures = None
        except (OSError, ValueError, KeyError, TypeError):
            figures = None
    if figures is None:
        figures = _time_products(shapes, modes)
        try:  # atomic: a concurrent reader sees the old file or the new one, never half of one
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
                json.dump({"cpu": cpu_model_name(), "torch": torch.__version__, "figures": figures}, handle)
            os.replace(handle.name, path)
        except OSError:
            pass  # a read-only home: the figures stay cached for this process
    _measured[key] = figures
    return figures


def speedup(figures: dict, mode: str) -> float | None:
    """The worst ratio, over the probe's token counts, of `mode`'s product speed to float32's (None if unmeasured)."""
    tokens = set(figures.get(mode, {})) & set(figures.get("float32", {}))
    if not tokens:
        return None
    return min(figures[mode][count] / figures["float32"][count] for count in tokens)


def close_enough(mode: str) -> bool:
    """Whether `mode` is known to keep min cosine >= 0.999 to float32 on the real model here (docs/performance.md):
    bfloat16 everywhere it is native (0.9998-0.9999); int8 with VNNI (0.9996-0.9998), not on AVX2 kernels, whose
    7-bit activations reach 0.99894."""
    if mode == "float32":
        return True
    if mode == "bfloat16":
        return cpu_has_native_bf16()
    return mode == "int8" and cpu_has_vnni()


def fastest_precision(config) -> tuple[str, dict]:
    """The fastest mode on this CPU that keeps min cosine >= 0.999, and the probe's figures it chose by. A mode must
    beat float32 by `FASTEST_MARGIN` at every probed token count; otherwise float32 (exact) wins."""
    figures = measure_products(config)
    best, best_speedup = "float32", FASTEST_MARGIN
    for mode in ("bfloat16", "int8"):
        ratio = speedup(figures, mode)
        if ratio is not None and close_enough(mode) and ratio >= best_speedup:
            best, best_speedup = mode, ratio
    return best, figures


def bf16_autocast_pays(config=None) -> bool:
    """Whether bfloat16 mixed precision trains faster than float32 here: on a GPU where bf16 is supported; on a CPU
    where the probe measures bf16 products faster than float32 ones (flags alone are not enough)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if not cpu_has_native_bf16():
        return False
    if config is None:
        try:
            from .configuration_embeddinggemma import EmbeddingGemmaConfig
        except ImportError:
            from configuration_embeddinggemma import EmbeddingGemmaConfig
        config = EmbeddingGemmaConfig()
    ratio = speedup(measure_products(config, modes=("float32", "bfloat16")), "bfloat16")
    return ratio is not None and ratio >= FASTEST_MARGIN


_warned: set[str] = set()


def warn_if_slower(mode: str, config) -> None:
    """Warns once per process and mode when `mode`'s products measure slower than float32's on this machine."""
    if mode in _warned:
        return
    _warned.add(mode)
    figures = measure_products(config)
    ratio = speedup(figures, mode)
    if ratio is None or ratio >= 1.0:
        return
    best, _ = fastest_precision(config)
    how = {
        "float32": "dtype=torch.float32 (the default)",
        "bfloat16": "dtype=torch.bfloat16",
        "int8": "quantize='int8'",
    }
    warnings.warn(
        f"{mode} runs slower than float32 on this machine: its products measured {ratio:.2f}x float32's "
        f"({cpu_model_name()}, {torch.get_num_threads()} threads; figures in GFLOP/s: {figures}). The fastest mode "
        f"here is {best}: load with {how[best]}, or precision='fastest' to let the package choose.",
        stacklevel=3,
    )
