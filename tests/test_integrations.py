"""The converted folder through transformers pipelines and sentence-transformers, as users call them."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, pipeline

from conftest import TEXTS
from helpers import ATOL


@pytest.fixture(scope="module")
def model(tiny_converted_dir):
    return AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).eval()


def test_sentence_embeddings_pipeline(tiny_converted_dir, model):
    pipe = pipeline("sentence-embeddings", model=str(tiny_converted_dir), trust_remote_code=True)
    one = pipe(TEXTS[0])
    assert isinstance(one, list) and len(one) == 48
    assert np.abs(np.array(one) - model.encode(TEXTS[0])).max() <= ATOL
    many = pipe(TEXTS, prompt_name="query", truncate_dim=32, batch_size=3)
    assert np.abs(np.array(many) - model.encode_query(TEXTS, truncate_dim=32)).max() <= ATOL
    as_tensor = pipe(TEXTS[1], prompt_name="document", return_tensors=True)
    assert torch.is_tensor(as_tensor) and np.abs(as_tensor.numpy() - model.encode_document(TEXTS[1])).max() <= ATOL


def test_sentence_similarity_call(tiny_converted_dir, model):
    pipe = pipeline("sentence-embeddings", model=str(tiny_converted_dir), trust_remote_code=True)
    scores = pipe({"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, prompt_name="STS")
    vectors = model.encode(TEXTS, prompt_name="STS")
    assert np.abs(np.array(scores) - vectors[1:] @ vectors[0]).max() <= ATOL
    with pytest.raises(ValueError, match="source_sentence"):
        pipe({"query": TEXTS[0]})


def test_feature_extraction_pipeline_gives_sentence_embeddings(tiny_converted_dir, model):
    pipe = pipeline("feature-extraction", model=str(tiny_converted_dir), trust_remote_code=True)
    out = pipe(TEXTS)
    assert np.array(out).shape == (4, 48)  # one vector per text, not [1, tokens, hidden]
    assert np.abs(np.array(out) - model.encode(TEXTS)).max() <= ATOL


def test_pipeline_bad_input(tiny_converted_dir):
    pipe = pipeline("sentence-embeddings", model=str(tiny_converted_dir), trust_remote_code=True)
    with pytest.raises(ValueError, match="Unknown prompt_name='nope'"):
        pipe(TEXTS, prompt_name="nope")
    with pytest.raises(ValueError, match="truncate_dim=7 is not one of"):
        pipe(TEXTS, truncate_dim=7)
    with pytest.raises(TypeError, match="takes a string, a list of strings"):
        pipe([TEXTS[0], 3])


def test_model_from_a_pipeline_saves_again(tiny_converted_dir, tmp_path):
    pipe = pipeline("sentence-embeddings", model=str(tiny_converted_dir), trust_remote_code=True)
    pipe.model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"]["sentence-embeddings"]["pt"] == ["AutoModel"]
    assert (tmp_path / "pipeline_embeddinggemma.py").is_file()


@pytest.mark.parametrize("truncate_dim", [None, 32])
def test_sentence_transformers_loads_the_converted_folder(tiny_st_dir, tiny_converted_dir, truncate_dim):
    reference = SentenceTransformer(str(tiny_st_dir), device="cpu", truncate_dim=truncate_dim)
    ours = SentenceTransformer(str(tiny_converted_dir), device="cpu", trust_remote_code=True, truncate_dim=truncate_dim)
    assert ours.prompts == reference.prompts
    assert ours.get_sentence_embedding_dimension() == (truncate_dim or 48)
    for method, kwargs in [
        ("encode_query", {}),
        ("encode_document", {}),
        ("encode", {"prompt_name": "STS"}),
        ("encode", {}),
    ]:
        expected = getattr(reference, method)(TEXTS, convert_to_tensor=True, **kwargs)
        actual = getattr(ours, method)(TEXTS, convert_to_tensor=True, **kwargs)
        assert actual.shape == expected.shape == (4, truncate_dim or 48)
        assert (actual - expected).abs().max() <= ATOL, (method, kwargs)
