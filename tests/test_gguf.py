"""The real Gemma 3 270M decoder GGUF (GEMMA3_DECODER_GGUF): converts through transformers' GGUF loader into a
bidirectional encoder that matches transformers' Gemma3TextModel(use_bidirectional_attention=True) on the
dequantised weights (verified during the conversion: float32 cosine >= 0.99999 per token), with a tokenizer that
tokenises like EmbeddingGemma's."""

import os
import re

import pytest

from conftest import REFERENCE, slow


GGUF = os.environ.get("GEMMA3_DECODER_GGUF")
pytestmark = pytest.mark.skipif(
    not GGUF,
    reason="GEMMA3_DECODER_GGUF is not set: point it at a Gemma 3 decoder GGUF (../shared/fixtures/"
    "fetch_reference_checkpoints.py fetches gemma-3-270m-q4_k_m.gguf) to run the real GGUF tests.",
)

OLD_TRANSFORMERS = int(__import__("transformers").__version__.split(".")[0]) < 5
needs_transformers_5 = pytest.mark.skipif(
    OLD_TRANSFORMERS, reason="transformers < 5 rebuilds the GGUF tokenizer with other ids; the converter refuses it"
)

TEXTS = ["task: search result | query: Which planet is known as the Red Planet?", "title: none | text: Mars ü 日本語"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from convert_checkpoint import convert

    return convert(GGUF, tmp_path_factory.mktemp("gguf") / "gemma3-270m-encoder", "gemma3")


@slow
@needs_transformers_5
def test_converts_and_verifies_against_transformers(converted):
    from transformers import AutoModel

    card = (converted / "README.md").read_text()
    match = re.search(r"minimum cosine ([0-9.]+), maximum absolute difference", card)
    assert match and float(match.group(1)) >= 0.99999, card
    assert "encoder last_hidden_state per real token" in card
    model = AutoModel.from_pretrained(converted, trust_remote_code=True)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.sliding_window) == (640, 18, 512)
    assert config.attention_window == (256, 256) and config.layer_types[5] == "full_attention"
    assert config.dense_out_features == [2560, 640]
    vectors = model.encode(TEXTS)
    assert vectors.shape == (2, 640) and abs(float((vectors**2).sum(-1).min()) - 1) < 1e-5


@slow
@needs_transformers_5
def test_tokenizer_tokenises_like_embeddinggemma(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted, trust_remote_code=True)
    ids = tokenizer(TEXTS)["input_ids"]
    assert all(row[0] == 2 and row[-1] == 1 for row in ids)  # <bos> ... <eos>
    assert tokenizer.padding_side == "right"
    if REFERENCE:
        reference = AutoTokenizer.from_pretrained(REFERENCE)
        assert ids == reference(TEXTS)["input_ids"]


@pytest.mark.skipif(not OLD_TRANSFORMERS, reason="only transformers < 5 is refused")
def test_old_transformers_are_refused_with_the_reason(tmp_path):
    from convert_checkpoint import ConversionError, convert

    with pytest.raises(ConversionError, match="Converting a GGUF needs transformers >= 5"):
        convert(GGUF, tmp_path / "out", "gemma3")
    assert list(tmp_path.iterdir()) == []
