# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""What every part of the converter shares: its errors, the source a reader returns, dtypes and the
verification floors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HEAD_INITS = ("identity", "random")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*/config.json", "*/*.safetensors"]
# Verification: the converted model against the source framework's own, per output dtype (cosine per token or text).
# Calibrated on the real google/embeddinggemma-300m and a tiny model (docs/conversion.md): a clean bfloat16 conversion
# gives 0.99989 (real) and 0.99994 (tiny); 20% noise in one MLP matrix gives 0.99956 (real, bfloat16).
MIN_COSINE = {torch.float32: 0.99999, torch.bfloat16: 0.9997}
VERIFY_TEXTS = [
    "Which planet is known as the Red Planet?",
    "title: none | text: Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "a",
]


class ConversionError(ValueError):
    """A source that cannot be converted; the message says what was wrong and how to fix it."""


class ReferenceUnavailable(Exception):
    """The source framework's own model cannot be run here (not installed, or a version that differs); verification
    is then skipped, saying why."""


@dataclass
class Source:
    """What a reader extracts from a checkpoint: our config fields and weights (head weights only if the source
    has a head), how to load its tokenizer, and how to run the source framework's own model for verification."""

    kind: str
    name: str
    fields: dict
    state_dict: dict[str, torch.Tensor]
    load_tokenizer: Callable[[], object]
    reference: Callable[
        [], Callable
    ]  # () -> fn(input_ids, attention_mask) -> (what, tensor); may raise ReferenceUnavailable
    notes: list[str] = field(default_factory=list)
    added_head: str | None = None  # "identity" or "random" when the converter gave a headless source its head

    @property
    def identity_head(self) -> bool:
        return self.added_head == "identity"

    @property
    def has_head(self) -> bool:
        return any(key.startswith("dense.") for key in self.state_dict)
