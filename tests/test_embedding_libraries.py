"""docs/integrations.md's snippets, run as written (the folder path replaced by a tiny converted model) with each
library that is installed (`bash setup.sh --integrations`: .venv-integrations has them all), each checked against
`encode_query` / `encode_document` of the model as AutoModel loads it: min cosine >= 0.9999. mteb's prompt choice
is checked through its own sentence-transformers wrapper."""

import ast
import importlib
import re

import numpy as np
import pytest
from transformers import AutoModel

from conftest import REPO


DOC = REPO / "docs" / "integrations.md"
MIN_COSINE = 0.9999
NEEDS_THE_HUB = ("mteb.evaluate",)  # blocks that download data sets: shown, not run


def snippets() -> list[tuple[str, str]]:
    """(section heading, code) for each Python block of docs/integrations.md."""
    found, heading = [], None
    for part in re.split(r"(^## [^\n]*|```python\n.*?```)", DOC.read_text(encoding="utf-8"), flags=re.M | re.S):
        if part.startswith("## "):
            heading = part[3:].strip()
        elif part.startswith("```python"):
            found.append((heading, part[len("```python\n") : -3]))
    return found


def imported_modules(code: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def require(code: str):
    for name in imported_modules(code):
        try:
            importlib.import_module(name)
        except ImportError as error:
            pytest.skip(f"{name} is not installed ({error}): bash setup.sh --integrations makes .venv-integrations")


def min_cosine(actual, expected) -> float:
    actual, expected = np.atleast_2d(np.asarray(actual, dtype=np.float64)), np.atleast_2d(expected)
    actual = actual / np.linalg.norm(actual, axis=1, keepdims=True)
    return float((actual * expected).sum(axis=1).min())


@pytest.fixture(scope="module")
def model(tiny_converted_dir):
    return AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).eval()


def test_the_doc_has_a_snippet_per_library():
    headings = [heading for heading, _ in snippets()]
    for library in ("sentence-transformers", "LangChain", "LlamaIndex", "Chroma", "Haystack", "mteb"):
        assert library in headings, headings


@pytest.mark.parametrize("index", range(len(snippets())), ids=[f"{h}-{i}" for i, (h, _) in enumerate(snippets())])
def test_snippet_gives_the_trained_embeddings(index, tiny_converted_dir, model):
    heading, code = snippets()[index]
    if any(call in code for call in NEEDS_THE_HUB):
        pytest.skip(f"the {heading} snippet downloads its tasks from the Hub; its prompts are checked below")
    require(code)
    namespace = {"__name__": f"snippet_{index}"}
    exec(compile(code.replace("./embeddinggemma-300m", str(tiny_converted_dir)), f"{DOC}:{heading}", "exec"), namespace)
    if "query_embedding" not in namespace:  # the Matryoshka block: unit vectors at the truncated dim (the tiny
        norms = np.linalg.norm(namespace["vectors"], axis=1)  # model has 48; the cut itself is tested below)
        dim = min(256, model.config.dense_out_features[-1])
        assert namespace["vectors"].shape[1] == dim and np.allclose(norms, 1, atol=1e-5), norms
        return
    query, documents = namespace["query"], namespace["documents"]
    assert min_cosine(namespace["query_embedding"], model.encode_query([query])) >= MIN_COSINE, heading
    assert min_cosine(namespace["document_embeddings"], model.encode_document(documents)) >= MIN_COSINE, heading


def test_langchain_huggingface_embeddings_replace_line_breaks(tiny_converted_dir, model):
    """Why docs/integrations.md gives LangChain its own Embeddings class: HuggingFaceEmbeddings embeds
    'a\\nb' as 'a b', whatever the prompts."""
    langchain_huggingface = pytest.importorskip("langchain_huggingface", reason="bash setup.sh --integrations")
    embeddings = langchain_huggingface.HuggingFaceEmbeddings(
        model_name=str(tiny_converted_dir),
        model_kwargs={"trust_remote_code": True},
        encode_kwargs={"prompt_name": "document"},
    )
    text = "Mars, known for its reddish appearance,\nis often called the Red Planet."
    vector = embeddings.embed_documents([text])
    assert min_cosine(vector, model.encode_document([text.replace("\n", " ")])) >= MIN_COSINE
    assert min_cosine(vector, model.encode_document([text])) < MIN_COSINE


def test_sentence_transformers_truncate_dim_cuts_after_normalising(tiny_converted_dir):
    """docs/integrations.md's Matryoshka note: truncate_dim alone gives norms below 1, normalize_embeddings=True
    gives unit vectors with our own truncate_dim's values."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_converted_dir), device="cpu", trust_remote_code=True, truncate_dim=16)
    texts = ["Mars is red.", "Venus is hot."]
    cut = st.encode_document(texts)
    assert cut.shape == (2, 16) and (np.linalg.norm(cut, axis=1) < 0.999).all()
    ours = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True).encode_document(texts, truncate_dim=16)
    np.testing.assert_allclose(st.encode_document(texts, normalize_embeddings=True), ours, atol=1e-5)


@pytest.mark.parametrize(
    "task, side, prompt_name",
    [("SciFact", "query", "Retrieval-query"), ("SciFact", "document", "Retrieval-document"),
     ("STSBenchmark", None, "STS"), ("Banking77Classification", None, "Classification")],
)  # fmt: skip
def test_mteb_picks_the_trained_prompt_per_task(tiny_converted_dir, model, task, side, prompt_name):
    """mteb's own prompt mechanism (its sentence-transformers wrapper, task metadata of real MTEB tasks, no data)
    gives the prompt the reference was evaluated with, and the embeddings of that prompt."""
    mteb = pytest.importorskip("mteb", reason="bash setup.sh --integrations")
    from mteb._create_dataloaders import _create_dataloader_from_texts
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_converted_dir), device="cpu", trust_remote_code=True)
    wrapper = SentenceTransformerEncoderWrapper(st)
    metadata = mteb.get_task(task).metadata
    prompt_type = PromptType(side) if side else None
    assert wrapper.get_prompt_name(metadata, prompt_type) == prompt_name
    texts = ["Which planet is known as the Red Planet?", "Venus is Earth's twin."]
    vectors = wrapper.encode(
        _create_dataloader_from_texts(texts), task_metadata=metadata, hf_split="test", hf_subset="default",
        prompt_type=prompt_type,
    )  # fmt: skip
    assert min_cosine(vectors, model.encode(texts, prompt_name=prompt_name)) >= MIN_COSINE
