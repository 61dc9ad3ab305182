# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's opt-in CPU int8 inference on oneDNN's int8 products (`torch.ops.onednn.qlinear_*`, the kernels
torch's own compiler emits for quantized CPU models; not the deprecated quantized tensors).

`EmbeddingGemmaModel.from_pretrained(..., quantize="int8")`, `model.quantize("int8", ...)` or `quantize_int8(model)`:

1. **Products**: all four of every layer (q/k/v and gate/up each fused into one); weights int8 with one scale per
   output channel, activations int8 with one scale per token (8 bits where the CPU has VNNI; activations keep 7 on
   AVX2 without it, whose u8 x s8 pair sums would otherwise saturate).
2. **Hadamard rotation** of each product's input in blocks of 32, x W^T = (x H)(W H)^T: a token whose energy sits in
   one channel spreads it over 32, so its per-token scale keeps the other channels' precision. For `o_proj` it is
   folded into the `v_proj` rows (free); for the other three it is one small product at run time.
3. **Calibration on real text + GPTQ**: the float model embeds `CALIBRATION_TEXTS` (or yours) with its prompts; each
   weight is rounded column by column with its error compensated through the Gram matrix of its calibration inputs.
4. **SmoothQuant** (opt-in, `smoothing=`): scales folded exactly into the layer that makes each input (the RMSNorm
   weights before q/k/v and gate/up, the `v_proj` rows before `o_proj`, the `up_proj` rows before `down_proj`).
   Off by default (docs/performance.md has why: measured on the real model with rotated inputs).

A module swap (as gpt-fast's): each linear layer of a product is replaced by an `Int8Linear`, or, for the layers that
share one product (q/k/v, gate/up), by an `Int8Part` of it; the model calls `q_proj`, `k_proj` and `v_proj` as it
always does and knows nothing of int8. docs/performance.md has the measured speed and agreement of each choice.
"""

import functools
import itertools

import torch
from torch import nn


try:  # modules of a package (the Hub's remote code, or an installed copy)
    from .calibration_embeddinggemma import CALIBRATION_TEXTS
    from .encoding_embeddinggemma import pad_right
    from .precision_embeddinggemma import cpu_has_vnni, warn_if_slower
except ImportError:  # top-level modules (this repository on sys.path)
    from calibration_embeddinggemma import CALIBRATION_TEXTS
    from encoding_embeddinggemma import pad_right
    from precision_embeddinggemma import cpu_has_vnni, warn_if_slower


# The products of a layer, each (module, fused name, the linear layers it fuses); all four are quantized by default.
PRODUCTS = (
    ("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("self_attn", "o_proj", ("o_proj",)),
    ("mlp", "gate_up_proj", ("gate_proj", "up_proj")),
    ("mlp", "down_proj", ("down_proj",)),
)
# SmoothQuant's migration strength a: 0 leaves the activations alone, 1 moves all their range into the weights.
DEFAULT_SMOOTHING = 0.0
# Block size of the Hadamard rotation of each product's input (0: none).
DEFAULT_ROTATION = 32

INFERENCE_ONLY = (
    "This model is quantized to int8, which is for inference only: its int8 products have no gradients. Train the "
    "float model (load it without quantize='int8'), then quantize the trained one for inference."
)


def int8_levels() -> tuple[int, int]:
    """The largest |int8 code| of (weights, activations). With VNNI, (127, 127). Without it, AVX2 kernels sum u8 x s8
    pairs in 16 bits and saturate (tests/test_fast_path.py shows it under ONEDNN_MAX_CPU_ISA=AVX2), so activations
    keep 7 bits: u8 codes up to 127, and 2 x 127 x 127 < 2**15. Weights keep 8: on the real model, 8-bit weights with
    7-bit activations agree with float32 better than the reverse (docs/performance.md)."""
    return (127, 127) if cpu_has_vnni() else (127, 63)


def int8_products_available() -> str | None:
    """None if this torch build runs oneDNN int8 products on this CPU, else why not."""
    if not (hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return f"torch {torch.__version__} has no oneDNN int8 products (torch.ops.onednn.qlinear_pointwise)"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    try:
        Int8Linear(torch.ones(2, 4), None)(torch.ones(1, 4))
    except RuntimeError as error:
        return f"oneDNN's int8 product failed on this CPU: {error}"
    return None


class Int8Linear(nn.Module):
    """x @ W^T (+ bias) with int8 weights (symmetric, one scale per output channel) and int8 activations quantized per
    token, on oneDNN's int8 product. Not a parameter holder: the packed weight is not saved, trained or moved.

    Per-token activation scales: each row of x (rotated in blocks of `rotation` when given) is divided by its max |x|
    and quantized to u8 around a zero point (oneDNN's fast kernels take u8 activations; the range is symmetric,
    +-`activation_levels`), and each output row is multiplied back by that max. Weights: integers of scale
    max |W_row| / `levels`, rounded to nearest or, given the calibration inputs' Gram matrix `gram`, by GPTQ.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        levels: int | None = None,
        rotation: int = 0,
        gram: torch.Tensor | None = None,
        activation_levels: int | None = None,
    ):
        super().__init__()
        self.training = False  # inference only (`train` refuses)
        self.out_features, self.in_features = weight.shape
        default_levels, default_activation_levels = int8_levels()  # this CPU's: safe from saturation
        self.levels = levels = levels or default_levels
        self.activation_levels = activation_levels = activation_levels or default_activation_levels
        self.zero_point = activation_levels + 1  # u8 codes 1 .. 2 * levels + 1
        self.rotation = rotation
        weight = weight.detach().float().cpu()
        if rotation:  # x W^T = (x H)(W H)^T, H orthogonal
            self._hadamard = hadamard(rotation)
            weight = rotate(weight, self._hadamard)
        self.weight_scale = (weight.abs().amax(dim=1) / levels).clamp(min=1e-12)
        if gram is None:  # round to nearest
            quantized = (weight / self.weight_scale[:, None]).round_().clamp_(-levels, levels).to(torch.int8)
        else:
            quantized = gptq_round(weight, self.weight_scale, levels, gram)
        self._codes = quantized.contiguous()  # kept (1 byte a weight) so that copies and pickles can repack
        self._packed = torch.ops.onednn.qlinear_prepack(self._codes, None)
        self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
        self.bias = None if bias is None else bias.detach().float().cpu()
        self.parts = 1  # how many `Int8Part`s read this product (`shared`)
        self._shared = None

    def __getstate__(self):
        """deepcopy, pickle and `torch.save(model)`: oneDNN's packed weight is an opaque tensor that cannot be copied;
        the int8 codes can, and `__setstate__` packs them again."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_packed": None, "_shared": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._packed = torch.ops.onednn.qlinear_prepack(self._codes, None)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(INFERENCE_ONLY)
        return super().train(mode)

    @classmethod
    def from_linears(
        cls, *linears: nn.Linear, levels: int | None = None, rotation: int = 0, gram=None, activation_levels=None
    ) -> "Int8Linear":
        """One product for `linears` that read the same input, their outputs concatenated (q/k/v, gate/up)."""
        weight = torch.cat([linear.weight.detach().float() for linear in linears])
        bias = None
        if any(linear.bias is not None for linear in linears):
            bias = torch.cat(
                [
                    linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features)
                    for linear in linears
                ]
            )
        return cls(weight, bias, levels, rotation, gram, activation_levels)

    def shared(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """The product of `x` for one of its `parts`: computed once while the parts are called in turn on the same
        input (held only until the last of them has read it), again for any other input."""
        cache = self._shared
        if cache is None or cache[0] is not x or part in cache[2]:
            cache = (x, self(x), set())
        cache[2].add(part)
        self._shared = None if len(cache[2]) == self.parts else cache
        return cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(INFERENCE_ONLY)
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if self.rotation:
            rows = rotate(rows, self._hadamard)
        row_max = torch.maximum(rows.amax(dim=-1, keepdim=True), rows.amin(dim=-1, keepdim=True).neg_())
        row_max.clamp_(min=1e-12)
        # u8 = round(levels x / max) + zero point: converted to int8, then shifted in u8 (two's complement wraps)
        levels = self.activation_levels
        quantized = torch.mul(rows, levels / row_max).round_().to(torch.int8).view(torch.uint8).add_(self.zero_point)
        output = torch.ops.onednn.qlinear_pointwise(
            quantized,
            1.0 / levels,
            self.zero_point,
            self._packed,
            self.weight_scale,
            self._zero_points,
            None,  # the bias is added after the per-token scale, below
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        output.mul_(row_max)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        rotation = f", Hadamard {self.rotation}" if self.rotation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, W per channel (|code| <= "
            f"{self.levels}), x per token (|code| <= {self.activation_levels}){rotation}"
        )


class Int8Part(nn.Module):
    """One of the linear layers whose outputs a fused `Int8Linear` computes together (q_proj of q/k/v, gate_proj of
    gate/up), swapped in for it: its output columns of the product, which runs once for the parts called in turn on
    the same input."""

    def __init__(self, product: Int8Linear, part: int, start: int, stop: int):
        super().__init__()
        self.training = False  # inference only (`train` refuses)
        self.product = product  # the same module in every part: counted once by `modules()`, and it has no weights
        self.part, self.start, self.stop = part, start, stop
        self.in_features, self.out_features = product.in_features, stop - start

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(INFERENCE_ONLY)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.shared(x, self.part)[..., self.start : self.stop]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the product"


@functools.lru_cache(maxsize=8)
def hadamard(size: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix of `size` (a power of two): symmetric, H @ H = I, entries +-1/sqrt(size)."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"a Hadamard block must be a power of two, not {size}.")
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / size**0.5


def rotate(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """x @ blockdiag(matrix, matrix, ...) over the last dimension (a multiple of the block)."""
    block = matrix.shape[0]
    return (x.reshape(-1, block) @ matrix).reshape(x.shape)


@torch.no_grad()
def calibrate(model: nn.Module, texts, tokenizer, rotations=None) -> dict[tuple[int, str], tuple]:
    """Runs the float model on `texts` (batched on the packed path, which shows the products real tokens only; else one
    text per forward, so that no padding is seen), each with one of the config's prompts in turn, and returns for
    every product {(layer, fused name): (largest |input| per input channel (in,), the input's Gram matrix X^T X
    (in, in), after the rotation of `rotations[fused]` when given)}."""
    encoder = getattr(model, "model", model)
    prompts = list((getattr(model.config, "prompts", None) or {}).values()) or [""]
    rotations = rotations or {}
    statistics: dict[tuple[int, str], tuple] = {}
    hooks = []

    def record(key):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            maximum = x.abs().amax(dim=0)
            if rotations.get(key[1]):
                x = rotate(x, hadamard(rotations[key[1]]))
            gram = x.t() @ x
            if key in statistics:
                maximum, gram = torch.maximum(statistics[key][0], maximum), statistics[key][1] + gram
            statistics[key] = (maximum, gram)

        return hook

    for index, layer in enumerate(encoder.layers):
        for module_name, fused, names in PRODUCTS:
            linear = getattr(getattr(layer, module_name), names[0])
            hooks.append(linear.register_forward_pre_hook(record((index, fused))))
    device = next(model.parameters()).device
    encoded = [
        tokenizer(prompt + text, truncation=True, max_length=model.config.max_position_embeddings)["input_ids"]
        for text, prompt in zip(texts, itertools.cycle(prompts))
    ]
    # The packed path shows the products real tokens only, so texts can share a forward; otherwise one text each.
    together = 32 if encoder.select_path() == "packed" else 1
    try:
        for first in range(0, len(encoded), together):
            input_ids, attention_mask = pad_right(encoded[first : first + together], model.config.pad_token_id or 0)
            encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return statistics


@torch.no_grad()
def gptq_round(weight: torch.Tensor, scale: torch.Tensor, levels: int, gram: torch.Tensor, block: int = 128):
    """GPTQ (Frantar et al., 2022): rounds `weight` (out, in) to integers of `scale` (out,) one input column at a time,
    each column's rounding error compensated on the columns not yet rounded, weighted by the inverse of the calibration
    inputs' Gram matrix, so that x W^T moves least on inputs like the calibration text. Returns the int8 codes."""
    columns = weight.shape[1]
    gram = gram.double().clone()
    dead = gram.diagonal() == 0
    gram[dead, dead] = 1.0
    gram.diagonal().add_(0.01 * gram.diagonal().mean())  # dampening, as in GPTQ
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(gram)), upper=True).float()
    transposed = weight.t().contiguous()  # (in, out): a column of the weight is a contiguous row here
    transposed[dead] = 0.0
    codes = torch.empty_like(transposed)
    inverse_scale = 1.0 / scale
    for first in range(0, columns, block):
        last = min(first + block, columns)
        part, inverse_part = transposed[first:last], inverse[first:last, first:last]
        errors = torch.empty_like(part)
        for i in range(last - first):
            code = torch.mul(part[i], inverse_scale, out=codes[first + i]).round_().clamp_(-levels, levels)
            error = torch.sub(part[i], code * scale, out=errors[i]).div_(inverse_part[i, i])
            part[i + 1 :].addr_(inverse_part[i, i + 1 :], error, alpha=-1.0)
        transposed[last:].addmm_(inverse[first:last, last:].t(), errors, alpha=-1.0)
    return codes.t().contiguous().to(torch.int8)


def smoothing_scales(input_max: torch.Tensor, weights: list[torch.Tensor], strength: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|x_j|^a / max|W_j|^(1-a) over the products reading this input (clamped, so that dead
    channels keep s = 1)."""
    weight_max = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    scales = input_max.clamp(min=1e-5).pow(strength) / weight_max.clamp(min=1e-5).pow(1 - strength)
    return torch.where((input_max > 0) & (weight_max > 0), scales, torch.ones_like(scales)).clamp(1e-4, 1e4)


@torch.no_grad()
def smooth_layer(layer: nn.Module, maxima: dict[str, torch.Tensor], strength: dict[str, float]) -> None:
    """Folds SmoothQuant scales into `layer`'s float weights: exact in float32 (the layer computes the same function).

    q/k/v and gate/up: 1/s into the RMSNorm before them ((1 + w) / s; Gemma's norm weight is zero-centred), s into
    their weight columns. o_proj: 1/s into the `v_proj` rows (attention output channel d is a mix of value channel d;
    query heads sharing a key/value head share s), s into o_proj's columns. down_proj: 1/s into the `up_proj` rows (its
    input is act(gate) * up), s into down_proj's columns.
    """
    attention, mlp = layer.self_attn, layer.mlp

    def scale_norm(norm, scales):
        norm.weight.copy_((1.0 + norm.weight.float()) / scales - 1.0)

    def scale_columns(linears, scales):
        for linear in linears:
            linear.weight.mul_(scales.to(linear.weight.dtype))

    def scale_rows(linear, scales):
        linear.weight.div_(scales[:, None].to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.div_(scales.to(linear.bias.dtype))

    qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
    if strength["qkv_proj"]:
        scales = smoothing_scales(maxima["qkv_proj"], [p.weight for p in qkv], strength["qkv_proj"])
        scale_norm(layer.input_layernorm, scales)
        scale_columns(qkv, scales)

    gate_up = [mlp.gate_proj, mlp.up_proj]
    if strength["gate_up_proj"]:
        scales = smoothing_scales(maxima["gate_up_proj"], [p.weight for p in gate_up], strength["gate_up_proj"])
        scale_norm(layer.pre_feedforward_layernorm, scales)
        scale_columns(gate_up, scales)

    if strength["down_proj"]:
        scales = smoothing_scales(maxima["down_proj"], [mlp.down_proj.weight], strength["down_proj"])
        scale_rows(mlp.up_proj, scales)
        scale_columns([mlp.down_proj], scales)

    if not strength["o_proj"]:
        return

    # o_proj's input channel (query head h, dim d) is value channel (h // group, d): one scale per value channel.
    heads, kv_heads, head_dim = (
        attention.config.num_attention_heads,
        attention.config.num_key_value_heads,
        attention.head_dim,
    )
    group = heads // kv_heads
    per_head = smoothing_scales(maxima["o_proj"], [attention.o_proj.weight], strength["o_proj"]).view(
        kv_heads, group, head_dim
    )
    value_scales = per_head.amax(dim=1)  # (kv_heads, head_dim): the largest of the heads that share it
    scale_rows(attention.v_proj, value_scales.reshape(-1))
    scale_columns([attention.o_proj], value_scales[:, None, :].expand(kv_heads, group, head_dim).reshape(-1))


@torch.no_grad()
def rotate_value_channels(attention: nn.Module, matrix: torch.Tensor) -> None:
    """Rotates o_proj's input for free: attention output channel d of a head is a mix of value channel d, so rotating
    the value channels in blocks (the `v_proj` rows) rotates the attention output, and o_proj's columns rotated the same
    way undo it: exact in float32, no work at run time."""
    block = matrix.shape[0]
    value = attention.v_proj
    rows = value.weight.detach().float().reshape(-1, block, value.in_features)
    value.weight.copy_(torch.matmul(matrix, rows).reshape(value.weight.shape))  # H^T = H
    if value.bias is not None:
        value.bias.copy_(rotate(value.bias.float(), matrix))
    attention.o_proj.weight.copy_(rotate(attention.o_proj.weight.float(), matrix))


def quantize_int8(
    model: nn.Module,
    skip: tuple[str, ...] = (),
    calibration_texts=None,
    tokenizer=None,
    smoothing: float | dict[str, float] = DEFAULT_SMOOTHING,
    rotation: int = DEFAULT_ROTATION,
    rounding: str = "gptq",
) -> nn.Module:
    """Replaces the encoder's products by `Int8Linear`, in place, and returns the model (eval mode, CPU).

    - `calibration_texts`: real text to calibrate on (default `CALIBRATION_TEXTS`, ~1,500 tokens; texts of your own
      domain are an option, not measured here), embedded with `tokenizer` (default: the model's own).
    - `rotation`: Hadamard block of each product's input (default 32; 0: none).
    - `rounding`: "gptq" (default; calibrated) or "nearest" (no calibration needed).
    - `smoothing`: SmoothQuant's migration strength, a float or {fused name: strength} (default 0: off; it made the
      real model's agreement worse once inputs are rotated, docs/performance.md).
    - `skip`: products to keep in float, by suffix ("mlp.down_proj", "self_attn.o_proj", "self_attn.qkv_proj",
      "mlp.gate_up_proj"; the names of the layers they fuse work too).

    The Dense head stays in float (it runs once per text). For CPU inference: the result cannot be saved with
    `save_pretrained` (quantize again after loading) nor trained; it can be deep-copied, pickled and `torch.save`-d
    whole. Where int8 products measure slower than float32 here (`precision_embeddinggemma`), it warns once with the
    figures; without VNNI, activations use 7 bits. `benchmarks/bench_inference.py` reports speed, agreement and
    STS-B for each mode.
    """
    if not isinstance(smoothing, dict):
        smoothing = dict.fromkeys([fused for _, fused, _ in PRODUCTS], smoothing)
    for fused, strength in smoothing.items():
        if not 0.0 <= strength <= 1.0:
            raise ValueError(
                f"smoothing={strength} for {fused} must lie in [0, 1] (SmoothQuant's migration strength; 0 turns it "
                "off)."
            )
    smoothing = {fused: smoothing.get(fused, 0.0) for _, fused, _ in PRODUCTS}
    if rounding not in ("gptq", "nearest"):
        raise ValueError(f"rounding={rounding!r}: expected 'gptq' (calibrated) or 'nearest'.")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize_int8 is for CPU inference; move the model to the CPU first (`model.to('cpu')`).")
    problem = int8_products_available()
    if problem is not None:
        raise RuntimeError(
            f"int8 needs oneDNN's int8 products: {problem}. Use dtype=torch.float32 or bfloat16 instead."
        )
    model.eval()
    encoder = getattr(model, "model", model)  # EmbeddingGemmaModel, or the encoder alone
    layers = list(encoder.layers)
    if any(isinstance(module, Int8Linear) for module in encoder.modules()):
        raise ValueError("This model is already quantized to int8; load the float model again to quantize it anew.")

    skip = check_skip(skip)

    def skipped(module_name, fused, names):
        return any(_names_match(f"{module_name}.{name}", suffix) for name in (fused, *names) for suffix in skip)

    if rotation and (rotation < 0 or rotation & (rotation - 1)):
        raise ValueError(f"rotation={rotation}: expected 0 (none) or a power of two (the Hadamard block size).")
    # The block of each product's online rotation (0 where its input width is not a multiple); o_proj's is folded.
    online = {}
    for module_name, fused, names in PRODUCTS:
        width = getattr(getattr(layers[0], module_name), names[0]).in_features
        online[fused] = rotation if rotation and fused != "o_proj" and width % rotation == 0 else 0
    if rotation:
        for layer in layers:
            if layer.self_attn.head_dim % rotation == 0 and not skipped(*PRODUCTS[1]):
                rotate_value_channels(layer.self_attn, hadamard(rotation))
    statistics = {}
    if any(smoothing.values()) or rounding == "gptq":
        texts = CALIBRATION_TEXTS if calibration_texts is None else check_calibration_texts(calibration_texts)
        if tokenizer is None:
            try:
                tokenizer = model.tokenizer
            except AttributeError as error:
                raise ValueError(
                    "int8 calibrates on text and this model has no tokenizer: pass tokenizer=... (or smoothing=0 and "
                    "rounding='nearest' to quantize without calibration)."
                ) from error
        if any(smoothing.values()):
            maxima = calibrate(model, texts, tokenizer)
            for index, layer in enumerate(layers):
                smooth_layer(layer, {fused: maxima[(index, fused)][0] for _, fused, _ in PRODUCTS}, smoothing)
        if rounding == "gptq":
            statistics = calibrate(model, texts, tokenizer, online)

    levels, activation_levels = int8_levels()
    for index, layer in enumerate(layers):
        for module_name, fused, names in PRODUCTS:
            if skipped(module_name, fused, names):
                continue
            module = getattr(layer, module_name)
            linears = [getattr(module, name) for name in names]
            gram = statistics[(index, fused)][1] if statistics else None
            product = Int8Linear.from_linears(
                *linears, levels=levels, rotation=online[fused], gram=gram, activation_levels=activation_levels
            )
            if len(names) == 1:
                setattr(module, names[0], product)
                continue
            product.parts, start = len(names), 0
            for part, (name, linear) in enumerate(zip(names, linears)):
                setattr(module, name, Int8Part(product, part, start, start + linear.out_features))
                start += linear.out_features
    warn_if_slower("int8", model.config)
    return model


def _names_match(name: str, suffix: str) -> bool:
    """Whether `suffix` names the product `name` ("self_attn.qkv_proj"): the whole name or its last part."""
    return name == suffix or name.endswith("." + suffix)


def valid_skip_names() -> list[str]:
    return list(dict.fromkeys(f"{module}.{name}" for module, fused, names in PRODUCTS for name in (fused, *names)))


def check_skip(skip) -> tuple[str, ...]:
    """`skip` as a tuple of product names: a str is one name (not its characters); each must name a product."""
    if isinstance(skip, str):
        skip = (skip,)
    try:
        skip = tuple(skip)
    except TypeError:
        raise TypeError(f"skip={skip!r} must be a product name or a sequence of them.") from None
    valid = valid_skip_names()
    unknown = [s for s in skip if not isinstance(s, str) or not any(_names_match(name, s) for name in valid)]
    if unknown:
        raise ValueError(
            f"skip={list(skip)}: {unknown} name no product of this model. Valid names (or their last part, e.g. "
            f"'down_proj'): {valid}."
        )
    return skip


def check_calibration_texts(texts) -> list[str]:
    """A list of non-empty strings, or a clear error naming the first bad entry."""
    if isinstance(texts, str):
        raise TypeError("calibration_texts must be a list of texts, not one str (it would be read letter by letter).")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"calibration_texts must be a list of texts, got {type(texts).__name__}.") from None
    if not texts:
        raise ValueError("calibration_texts is empty: pass some real text, or None for the built-in texts.")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"calibration_texts[{index}] is {text!r}; every calibration text must be a non-empty str "
                "(real text like the model will embed)."
            )
    return texts
