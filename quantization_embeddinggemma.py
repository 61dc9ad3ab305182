# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's opt-in CPU int8 inference: per-output-channel int8 weights, per-token int8 activations.

`EmbeddingGemmaModel.from_pretrained(..., quantize="int8")` or `quantize_int8(model)`. Everything int8 lives here;
the model file only knows that a quantized attention or MLP computes q/k/v or gate/up in one fused product
(`qkv_proj`, `gate_up_proj`). See docs/performance.md for the measured speed and agreement.
"""

import functools
import warnings

import torch
from torch import nn


# Layers left in float32 by default: the inputs of `down_proj` carry outliers of 40-100x their RMS, so they lose the
# most to int8 (see docs/performance.md for the measured trade-off of each choice).
INT8_SKIP_DEFAULT = ("mlp.down_proj",)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX512_BF16 or AMX-BF16; Arm BF16). Without it, bfloat16
    products are emulated and run several times slower than float32."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_arm_sve_bf16_supported"):
        probe = getattr(torch.cpu, check, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:
            continue
    try:
        with open("/proc/cpuinfo") as handle:
            flags = {word for line in handle if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class Int8Linear(nn.Module):
    """A bias-optional `nn.Linear` replacement computing x @ W^T with int8 weights (symmetric, one scale per output
    channel) and int8 activations quantized per token, on the fbgemm/x86 int8 kernels of torch's CPU build.

    Per-token activation scales come from a rescaling: each row of x is divided by its max |x| before the kernel's
    dynamic per-tensor quantization (so every row spans the same range and gets its own effective scale), and the
    output rows are multiplied back. Weights use 7 bits (|q| <= 63) so that AVX2's u8 x s8 pair sums cannot saturate
    (2 * 255 * 63 < 2**15) while activations keep all 8 bits.
    """

    WEIGHT_LEVELS = 63

    def __init__(self, *linears: nn.Linear):
        """One int8 product for `linears` that read the same input, their outputs concatenated (q/k/v, gate/up)."""
        super().__init__()
        self.in_features = linears[0].in_features
        self.out_features = sum(linear.out_features for linear in linears)
        weight = torch.cat([linear.weight.detach().float().cpu() for linear in linears])
        scale = (weight.abs().amax(dim=1) / self.WEIGHT_LEVELS).clamp(min=1e-12)
        biases = [linear.bias for linear in linears]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [
                    b.detach().float().cpu() if b is not None else torch.zeros(linear.out_features)
                    for b, linear in zip(biases, linears)
                ]
            )
        with warnings.catch_warnings():  # torch marks quantized tensors as deprecated; the kernels remain
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(
                weight, scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8
            )
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        row_max = torch.linalg.vector_norm(rows, ord=float("inf"), dim=-1, keepdim=True).clamp_(min=1e-12)
        output = torch.ops.quantized.linear_dynamic(rows / row_max, self._packed, False)
        return output.mul_(row_max).reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (per-channel W, per-token x)"


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = INT8_SKIP_DEFAULT) -> nn.Module:
    """Replaces the encoder's linear layers by `Int8Linear`, in place, and returns the model (eval mode, CPU).

    `skip` names layers to keep in float32 by suffix ("mlp.down_proj", "self_attn.o_proj", ...); () quantizes all.
    The Dense head stays in float32 (it runs once per text). For CPU inference: torch's int8 kernels are CPU-only,
    the result cannot be saved (quantize again after loading) nor trained. Check its agreement with the float model
    on your own texts (`benchmarks/bench_inference.py` reports min/mean cosine and STS-B for each choice).
    """
    import torch.backends.quantized

    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm")):
        raise RuntimeError(f"int8 needs torch's x86/fbgemm quantized engine; this build has {engines}.")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize_int8 is for CPU inference; move the model to the CPU first (`model.to('cpu')`).")
    if "x86" in engines:
        torch.backends.quantized.engine = "x86"
    if cpu_has_native_bf16():
        warnings.warn(
            "This CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), and there bfloat16 runs faster than this "
            "int8 mode and closer to float32 (docs/performance.md): load with dtype=torch.bfloat16 instead of "
            "quantize='int8'.",
            stacklevel=2,
        )

    def skipped(name):
        return any(name.endswith(suffix) for suffix in skip)

    encoder = getattr(model, "model", model)  # EmbeddingGemmaModel, or the encoder alone
    for layer in encoder.layers:
        attention, mlp = layer.self_attn, layer.mlp
        # Projections that read the same input share one product (and one quantization of that input).
        fused = [
            (attention, "self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
            (attention, "self_attn", "o_proj", ("o_proj",)),
            (mlp, "mlp", "gate_up_proj", ("gate_proj", "up_proj")),
            (mlp, "mlp", "down_proj", ("down_proj",)),
        ]
        for module, prefix, fused_name, names in fused:
            if any(skipped(f"{prefix}.{n}") for n in names):
                continue
            linears = [getattr(module, n) for n in names]
            if not all(isinstance(linear, nn.Linear) for linear in linears):
                continue  # already quantized
            for n in names:
                delattr(module, n)
            setattr(module, fused_name, Int8Linear(*linears))
            if fused_name == "qkv_proj":
                module.qkv_sizes = [linear.out_features for linear in linears]
    return model.eval()
