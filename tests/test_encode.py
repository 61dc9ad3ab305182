"""encode / encode_query / encode_document on a converted tiny model: equal to manual prompt + tokenize + forward,
in input order, with clear errors for bad input."""

import logging

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from conftest import TEXTS, slow
from encoding_embeddinggemma import token_length_batches
from helpers import ATOL
from modeling_embeddinggemma import EmbeddingGemmaModel


@pytest.fixture(scope="module")
def model(tiny_converted_dir):
    return AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def manual(tiny_converted_dir, model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_converted_dir, trust_remote_code=True)

    def embed(texts, truncate_dim=None):
        with torch.no_grad():
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            return model(**batch, truncate_dim=truncate_dim).sentence_embedding.numpy()

    return embed


def test_encode_query_and_document_equal_manual_prompting(model, manual):
    assert (
        np.abs(model.encode_query(TEXTS) - manual(["task: search result | query: " + t for t in TEXTS])).max() <= ATOL
    )
    assert np.abs(model.encode_document(TEXTS) - manual(["title: none | text: " + t for t in TEXTS])).max() <= ATOL
    titled = model.encode_document(TEXTS[:2], titles=["Mars", None])
    expected = manual(["title: Mars | text: " + TEXTS[0], "title: none | text: " + TEXTS[1]])
    assert np.abs(titled - expected).max() <= ATOL
    assert (
        np.abs(
            model.encode(TEXTS, prompt_name="STS") - manual(["task: sentence similarity | query: " + t for t in TEXTS])
        ).max()
        <= ATOL
    )
    assert np.abs(model.encode(TEXTS, prompt="custom: ") - manual(["custom: " + t for t in TEXTS])).max() <= ATOL
    assert np.abs(model.encode(TEXTS) - manual(TEXTS)).max() <= ATOL  # no default prompt


def test_shapes_types_and_order(model, manual):
    single = model.encode("a dog")
    assert isinstance(single, np.ndarray) and single.shape == (48,) and single.dtype == np.float32
    # Sorting by length must not reorder the output: compare each text alone with the batch.
    texts = TEXTS + ["planet", "a", TEXTS[0] + " " + TEXTS[3]]
    batched = model.encode(texts, batch_size=3)
    for row, text in enumerate(texts):
        assert np.abs(batched[row] - manual([text])[0]).max() <= ATOL
    tensor = model.encode(texts, convert_to_numpy=False, truncate_dim=16)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (7, 16)
    assert torch.allclose(tensor.norm(dim=-1), torch.ones(7), atol=1e-6)
    assert np.abs(tensor.numpy() - manual(texts, truncate_dim=16)).max() <= ATOL
    empty = model.encode([])
    assert empty.shape == (0, 48)
    assert model.encode([], truncate_dim=32, convert_to_numpy=False).shape == (0, 32)


def test_token_budget_batching_gives_the_same_vectors(model):
    texts = TEXTS * 3
    reference = model.encode(texts, batch_size=32)
    assert np.abs(model.encode(texts, max_batch_tokens=40) - reference).max() <= ATOL
    assert token_length_batches([10, 8, 8, 3, 2], batch_size=4, max_batch_tokens=17) == [1, 2, 2]
    assert token_length_batches([50, 3], batch_size=4, max_batch_tokens=10) == [1, 1]  # a long text still goes alone
    assert token_length_batches([5, 5, 5], batch_size=2) == [2, 1]


def test_progress_bar_only_when_asked_or_long(model, capsys):
    from encoding_embeddinggemma import PROGRESS_BAR_MIN_TOKENS

    model.encode(TEXTS, batch_size=1)  # 4 batches, a few dozen tokens: no bar
    assert "Encoding" not in capsys.readouterr().err
    model.encode(TEXTS, show_progress_bar=True)
    assert "Encoding" in capsys.readouterr().err
    # 1,000 short texts fill only a few token-budget batches, but are long enough to wait for: the bar counts texts
    many = ["the man is playing guitar on the red planet mars"] * 1000
    assert sum(len(ids) for ids in model._tokenize(many)) >= PROGRESS_BAR_MIN_TOKENS
    model.encode(many)
    assert "1000/1000" in capsys.readouterr().err
    model.encode(many, show_progress_bar=False)
    assert "Encoding" not in capsys.readouterr().err


def test_long_texts_are_truncated_with_one_warning(model, caplog, monkeypatch):
    long_text = " ".join(["the red planet"] * 200)  # far beyond the tiny model's 128 tokens
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(model, "_warned_truncation", False, raising=False)
    out = model.encode([long_text, "a dog"])
    assert out.shape == (2, 48) and np.isfinite(out).all()
    assert "1 text(s) are longer than the model's 128 tokens and were truncated" in caplog.text
    caplog.clear()
    model.encode([long_text])
    assert "truncated" not in caplog.text  # once per model
    tokens = model._tokenize([long_text])[0]
    assert len(tokens) == 128 and tokens[0] == 2 and tokens[-1] == 1  # <bos> ... <eos> kept


def test_bad_inputs_say_what_is_wrong(model):
    with pytest.raises(ValueError, match=r"Unknown prompt_name='qeury'; this model knows \[.*'STS'.*'query'\]"):
        model.encode(TEXTS, prompt_name="qeury")
    with pytest.raises(ValueError, match=r"truncate_dim=100 is not one of this model's Matryoshka dims \[48, 32, 16\]"):
        model.encode(TEXTS, truncate_dim=100)
    with pytest.raises(TypeError, match=r"items \(index, type\) \[\(1, 'int'\), \(2, 'NoneType'\)\] are not strings"):
        model.encode(["fine", 3, None])
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        model.encode(TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="Got 1 titles for 2 texts"):
        model.encode_document(TEXTS[:2], titles=["only one"])
    with pytest.raises(ValueError, match="either titles or prompt"):
        model.encode_document(TEXTS[:2], titles=["a", "b"], prompt_name="query")


def test_a_model_built_in_memory_needs_a_tokenizer_set(tiny_converted_dir):
    from modeling_embeddinggemma import EmbeddingGemmaModel
    from testing_embeddinggemma import tiny_config

    model = EmbeddingGemmaModel(tiny_config())
    with pytest.raises(AttributeError, match=r"Set one with `model.tokenizer = AutoTokenizer.from_pretrained"):
        model.encode("a dog")
    assert not hasattr(model, "tokenizer") and getattr(model, "tokenizer", None) is None  # an attribute like any other
    model.tokenizer = AutoTokenizer.from_pretrained(tiny_converted_dir)
    assert model.encode("a dog").shape == (48,)


def test_loading_options_people_use(tiny_converted_dir, model):
    expected = model.encode(TEXTS)
    for kwargs in (
        {"attn_implementation": "eager"},
        {"attn_implementation": "sdpa"},
        {"device_map": "cpu"},
        {"low_cpu_mem_usage": True},
    ):
        other = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True, **kwargs)
        assert np.abs(other.encode(TEXTS) - expected).max() <= ATOL, kwargs
    half = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    vectors = half.encode(TEXTS)
    assert vectors.dtype == np.float32 and (vectors * expected).sum(-1).min() >= 0.99


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_converted_dir, reentrant):
    """Reentrant checkpointing (transformers 4.x's default) runs the training forward without autograd: the layers
    must not take their in-place inference forms there."""
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")

    def gradients():
        model.zero_grad()
        model(**batch).sentence_embedding.pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    assert max((plain[n] - checkpointed[n]).abs().max() for n in plain) <= 1e-6


@slow
def test_torch_compile_gives_the_same_vectors(tiny_converted_dir):
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    compiled = torch.compile(model)
    with torch.no_grad():
        assert (compiled(**batch).sentence_embedding - model(**batch).sentence_embedding).abs().max() <= ATOL


def test_token_budget_batches():
    assert token_length_batches([10] * 10, batch_size=None, max_batch_tokens=40) == [4, 4, 2]
    assert token_length_batches([3] * 100, batch_size=None, max_batch_tokens=4096) == [100]
    assert token_length_batches([3] * 100, batch_size=32, max_batch_tokens=4096) == [32, 32, 32, 4]
    assert token_length_batches([5000, 10], batch_size=None, max_batch_tokens=4096) == [1, 1]


def test_encode_default_batches_by_tokens(tiny_converted_dir, monkeypatch):
    model = EmbeddingGemmaModel.from_pretrained(tiny_converted_dir)
    texts = ["a dog"] * 50 + ["the man is playing guitar on the red planet mars in the blue sky"] * 5
    sizes = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda **k: sizes.append(tuple(k["input_ids"].shape)) or original(**k))
    first = model.encode(texts)
    assert len(sizes) == 1 and sizes[0][0] == 55  # one batch: far below 4,096 tokens, and no count limit
    sizes.clear()
    second = model.encode(texts, max_batch_tokens=60)
    assert len(sizes) > 1 and all(rows * length <= 60 for rows, length in sizes)  # rows x longest
    np.testing.assert_allclose(first, second, atol=ATOL)
    with pytest.raises(ValueError, match="max_batch_tokens=0 must be a positive int"):
        model.encode(texts, max_batch_tokens=0)
