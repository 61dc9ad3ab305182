# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Texts in, embeddings out: `encode`, `encode_query` and `encode_document`, the sentence-transformers habits, as a
mixin of `EmbeddingGemmaModel` (which provides `config`, `forward`, `check_truncate_dim`, `dtype` and `device`).

Texts are tokenized with <bos>/<eos>, sorted by token length and batched by a token budget, so a batch holds texts
of similar length and the product sizes stay large; the results come back in input order.
"""

import os

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Tokens per `encode` batch by default: large enough that the matrix multiplies run at the CPU's full rate, small
# enough to bound memory (docs/performance.md has the rates by batch size).
DEFAULT_MAX_BATCH_TOKENS = 4096
# `show_progress_bar=None` shows the bar when the work is at least this many tokens (padded): a few seconds of work on
# a laptop CPU with the real model, a wait worth watching.
PROGRESS_BAR_MIN_TOKENS = 8_192

NO_TOKENIZER = (
    "This model has no tokenizer: it was not loaded from a folder or Hub repo that holds one. Set one with "
    "`model.tokenizer = AutoTokenizer.from_pretrained(...)`."
)


# The files a tokenizer is built from, by the fixed names transformers resolves in the folder itself.
TOKENIZER_FILES = {"tokenizer_file": "tokenizer.json", "vocab_file": "tokenizer.model"}


def own_tokenizer_files(source: str) -> dict:
    """The folder's (or Hub repo's) own tokenizer files, as keyword arguments that override what its
    tokenizer_config.json names: transformers 4.x follows a `tokenizer_file` / `vocab_file` written there, even a path
    outside the folder; 5.x resolves the fixed names only. A file the folder lacks is passed as None."""
    from transformers.utils import cached_file

    files = {}
    for key, name in TOKENIZER_FILES.items():
        if os.path.isdir(source):
            path = os.path.join(source, name)
            files[key] = path if os.path.isfile(path) else None
        else:
            files[key] = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    return files


class EmbeddingGemmaEncodeMixin:
    """`encode`, `encode_query`, `encode_document` and the `tokenizer` they use."""

    @property
    def tokenizer(self):
        """The tokenizer of the folder or Hub repo this model was loaded from (loaded on first use), or the one set
        with `model.tokenizer = ...`. An attribute like any other: `hasattr(model, "tokenizer")` is False when there
        is none, and reading it then raises AttributeError saying how to set one."""
        tokenizer = self.__dict__.get("_tokenizer")
        if tokenizer is None:
            source = getattr(self.config, "name_or_path", None)
            if not source:
                raise AttributeError(NO_TOKENIZER)
            from transformers import AutoTokenizer

            try:
                # the model's own config: the folder's config (and any code it names) is not loaded again
                tokenizer = AutoTokenizer.from_pretrained(source, config=self.config, **own_tokenizer_files(source))
            except (OSError, ValueError) as error:
                raise AttributeError(f"{NO_TOKENIZER} Loading one from {source!r} failed: {error}") from error
            self.__dict__["_tokenizer"] = tokenizer
        return tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        self.__dict__["_tokenizer"] = tokenizer

    def __getattr__(self, name):
        # nn.Module.__getattr__ answers an AttributeError raised inside a property with its own message; keep ours.
        if name == "tokenizer":
            type(self).tokenizer.fget(self)
        return super().__getattr__(name)

    def encode(
        self,
        texts: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
        max_batch_tokens: int | None = None,
    ):
        """Embeds `texts` with the prompt `prompt` or the one named `prompt_name` (see `config.prompts`).

        A string gives one vector `[dim]`, a list a matrix `[len(texts), dim]` in input order (numpy float32 by
        default, else a float32 tensor, whatever the model's dtype). Texts are sorted by token length and batched by
        a token budget: a batch holds at most `max_batch_tokens` tokens (default `DEFAULT_MAX_BATCH_TOKENS`, 4,096,
        counted as rows x longest) and, when `batch_size` is given, at most `batch_size` texts; a text longer than the
        budget goes alone. Texts longer than the model's maximum length are truncated, with a warning. `truncate_dim` is
        one of `config.matryoshka_dims`. The progress bar (texts done) shows by default when the work is long enough
        to wait for (`PROGRESS_BAR_MIN_TOKENS`); `show_progress_bar=True`/`False` forces it.
        """
        texts, single = _as_text_list(texts)
        prompts = [self.config.prompt_for(prompt_name, prompt)] * len(texts)
        return self._encode(
            texts,
            prompts,
            single=single,
            batch_size=batch_size,
            truncate_dim=truncate_dim,
            convert_to_numpy=convert_to_numpy,
            show_progress_bar=show_progress_bar,
            device=device,
            max_batch_tokens=max_batch_tokens,
        )

    def encode_query(self, texts: str | list[str], **kwargs):
        """`encode` with the "query" prompt (`task: search result | query: `) unless `prompt`/`prompt_name` is given."""
        kwargs.setdefault("prompt_name", "query")
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: str | list[str], titles: str | list[str | None] | None = None, **kwargs):
        """`encode` with the document prompt: `title: {title} | text: ` when `titles` are given (one per text,
        None for none), `title: none | text: ` otherwise."""
        if titles is None:
            kwargs.setdefault("prompt_name", "document")
            return self.encode(texts, **kwargs)
        if kwargs.get("prompt") is not None or kwargs.get("prompt_name") is not None:
            raise ValueError("Pass either titles or prompt/prompt_name to encode_document, not both.")
        texts, single = _as_text_list(texts)
        titles = [titles] if isinstance(titles, str) else list(titles)
        if len(titles) != len(texts):
            raise ValueError(f"Got {len(titles)} titles for {len(texts)} texts; pass one title (or None) per text.")
        return self._encode(texts, [self.config.document_prompt(title) for title in titles], single=single, **kwargs)

    @torch.no_grad()
    def _encode(
        self,
        texts: list[str],
        prompts: list[str],
        *,
        single: bool,
        batch_size: int | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
        max_batch_tokens: int | None = None,
    ):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(
                f"batch_size={batch_size!r} must be a positive int (or None: as many as the token budget holds)."
            )
        if max_batch_tokens is None:
            max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens={max_batch_tokens!r} must be a positive int.")
        truncate_dim = self.check_truncate_dim(truncate_dim)
        dim = truncate_dim or self.config.embedding_dim
        if device is not None:
            self.to(device)
        if not texts:
            empty = torch.empty(0, dim, dtype=torch.float32)
            return empty.float().numpy() if convert_to_numpy else empty

        input_ids = self._tokenize([p + t for p, t in zip(prompts, texts)])
        order = sorted(range(len(texts)), key=lambda i: -len(input_ids[i]))  # longest first: OOM shows at once
        sizes = token_length_batches([len(input_ids[i]) for i in order], batch_size, max_batch_tokens)
        if show_progress_bar is None:
            padded_tokens, start = 0, 0
            for size in sizes:
                padded_tokens += size * len(input_ids[order[start]])
                start += size
            show_progress_bar = padded_tokens >= PROGRESS_BAR_MIN_TOKENS
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        output = torch.empty(len(texts), dim, dtype=torch.float32, device=self.device)  # normalised in float32
        start = 0
        with tqdm(total=len(texts), desc="Encoding", unit="text", disable=not show_progress_bar) as progress:
            for size in sizes:
                rows = order[start : start + size]
                start += size
                batch_ids, attention_mask = pad_right([input_ids[i] for i in rows], self.config.pad_token_id or 0)
                embeddings = self(
                    input_ids=batch_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    truncate_dim=truncate_dim,
                ).sentence_embedding
                output[torch.tensor(rows, device=self.device)] = embeddings
                progress.update(size)
        self.train(was_training)
        if single:
            output = output[0]
        return output.float().cpu().numpy() if convert_to_numpy else output

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text with <bos>/<eos>, truncated to the model's maximum length (with a warning)."""
        tokenizer = self.tokenizer
        input_ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        max_length = max_input_length(self.config, tokenizer)
        too_long = [i for i, ids in enumerate(input_ids) if len(ids) > max_length]
        if too_long and not getattr(self, "_warned_truncation", False):
            self._warned_truncation = True  # once per model: corpus jobs call encode many times
            logger.warning(
                f"{len(too_long)} text(s) are longer than the model's {max_length} tokens and were truncated "
                f"(first: index {too_long[0]}, {len(input_ids[too_long[0]])} tokens); later truncations are not "
                "reported. Split long documents into chunks to embed all of them."
            )
        if too_long:
            truncated = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length)["input_ids"]
            for i, ids in zip(too_long, truncated):
                input_ids[i] = ids
        return input_ids


def max_input_length(config, tokenizer) -> int:
    """The longest input the model takes: its maximum positions, or the tokenizer's limit when that is smaller."""
    max_length = config.max_position_embeddings
    if tokenizer.model_max_length and tokenizer.model_max_length < max_length:
        max_length = tokenizer.model_max_length
    return max_length


def _as_text_list(texts) -> tuple[list[str], bool]:
    """(texts as a list, whether one string was given), with a clear error for anything but strings."""
    if isinstance(texts, str):
        _check_encodable([texts])
        return [texts], True
    if isinstance(texts, (dict, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"encode takes a string or a list of strings, got {type(texts).__name__}.")
    texts = list(texts)
    _check_encodable([t for t in texts if isinstance(t, str)])
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode takes a string or a list of strings; items (index, type) {bad[:5]} are not strings.")
    return texts, False


def _check_encodable(texts: list[str]) -> None:
    """Text the tokenizer cannot take (lone surrogates, e.g. from a bad decode) fails naming its index."""
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"Text {index} is not valid Unicode ({error.reason} at character {error.start}: a lone surrogate, "
                "usually from decoding bytes wrongly); fix or drop it, e.g. text.encode('utf-8', 'replace').decode()."
            ) from None


def token_length_batches(lengths: list[int], batch_size: int | None, max_batch_tokens: int | None = None) -> list[int]:
    """Sizes of consecutive batches over texts sorted by decreasing token length: at most `batch_size` texts (None:
    no limit), and at most `max_batch_tokens` padded tokens (the first text's length times the count) unless a text
    alone exceeds it."""
    sizes, start = [], 0
    while start < len(lengths):
        size = len(lengths) - start if batch_size is None else min(batch_size, len(lengths) - start)
        if max_batch_tokens is not None:
            size = max(1, min(size, max_batch_tokens // max(lengths[start], 1)))
        sizes.append(size)
        start += size
    return sizes


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), real tokens first."""
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
