"""The real google/embeddinggemma-300m: converted, loaded through AutoModel with trust_remote_code, compared with
SentenceTransformer(reference). Tolerances: float32 cosine >= 0.99999 and max abs <= 5e-5; bfloat16 cosine >= 0.999
(against the float32 reference)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_checkpoint, slow


pytestmark = requires_checkpoint

SHORT = [
    "Which planet is known as the Red Planet?",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
]
LONG_1K = " ".join(f"Sentence {i} describes the slow orbit of a distant moon." for i in range(110))  # ~1,200 tokens
LONG_2K = " ".join(f"Paragraph {i}: rivers carry sediment towards the delta every spring." for i in range(260))


@pytest.fixture
def reference(real_reference):
    return real_reference


@pytest.fixture
def converted(real_converted):
    return real_converted


def ours(model, texts, prompt=""):
    """Our model's forward through AutoTokenizer, one text at a time (no padding to 2,048 tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, trust_remote_code=True)
    outputs = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding to 2,048 tokens
            batch = tokenizer([prompt + text], truncation=True, max_length=2048, return_tensors="pt")
            outputs.append(model(**batch).sentence_embedding.float())
    return torch.cat(outputs)


def test_long_texts_are_long(reference):
    lengths = [len(reference.tokenizer(text)["input_ids"]) for text in (LONG_1K, LONG_2K)]
    assert lengths[0] > 1000 and lengths[1] > 2048


@pytest.mark.parametrize("prompt_name", [None, "query", "document"])
def test_float32_matches_sentence_transformers(reference, real_model, prompt_name):
    texts = SHORT + ([LONG_1K, LONG_2K] if prompt_name == "query" else [])
    expected = reference.encode(texts, prompt_name=prompt_name, convert_to_tensor=True, batch_size=1)
    prompt = reference.prompts[prompt_name] if prompt_name else ""
    actual = ours(real_model, texts, prompt)
    assert F.cosine_similarity(actual, expected).min() >= 0.99999
    assert (actual - expected).abs().max() <= 5e-5


@slow
def test_bfloat16_stays_close(reference, converted):
    from transformers import AutoModel

    texts = SHORT + [LONG_1K]
    prompt = reference.prompts["query"]
    expected = reference.encode(texts, prompt_name="query", convert_to_tensor=True, batch_size=1)
    model = AutoModel.from_pretrained(converted, trust_remote_code=True, dtype=torch.bfloat16).eval()
    actual = ours(model, texts, prompt)
    assert F.cosine_similarity(actual, expected).min() >= 0.999


@slow
def test_int8_stays_within_q8_0s_agreement(converted, real_model):
    """quantize='int8' (rotation + GPTQ calibrated on the built-in texts) against float32 on STS-B test sentences with
    the STS prompt and on long texts: min cosine >= 0.999 with VNNI (llama.cpp Q8_0's level), >= 0.998 without it
    (7-bit activations: 0.99894 measured; docs/performance.md)."""
    import warnings

    from transformers import AutoModel

    from conftest import REPO
    from precision_embeddinggemma import cpu_has_vnni

    stsb = REPO.parent / "shared" / "data" / "stsbenchmark" / "sts-test.csv"
    sentences = SHORT
    if stsb.exists():
        rows = [line.split("\t") for line in stsb.read_text(encoding="utf-8").splitlines()]
        sentences = sorted({field for row in rows if len(row) >= 7 for field in row[5:7]})[:400]
    texts = sentences + [LONG_1K, LONG_2K]
    expected = real_model.encode(texts, prompt_name="STS", convert_to_numpy=False)
    with warnings.catch_warnings():  # the AMX advice, on CPUs that have it
        warnings.simplefilter("ignore")
        int8 = AutoModel.from_pretrained(converted, trust_remote_code=True, quantize="int8").eval()
    actual = int8.encode(texts, prompt_name="STS", convert_to_numpy=False)
    cosine = (actual * expected).sum(-1)
    assert cosine.min() >= (0.999 if cpu_has_vnni() else 0.998), (cosine.min(), cosine.argmin())
    assert (actual - expected).abs().max() > 1e-4  # int8 really ran


CARD_QUERY = "Which planet is known as the Red Planet?"
CARD_DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]
CARD_SIMILARITIES = [0.3011, 0.6359, 0.4930, 0.4889]  # google/embeddinggemma-300m's model card


def test_model_card_example_three_ways(converted, real_model):
    from sentence_transformers import SentenceTransformer
    from transformers import pipeline

    model = real_model
    scores = model.encode_query(CARD_QUERY) @ model.encode_document(CARD_DOCUMENTS).T
    assert abs(scores - torch.tensor(CARD_SIMILARITIES).numpy()).max() <= 0.002

    pipe = pipeline("sentence-embeddings", model=str(converted), trust_remote_code=True)
    query = torch.tensor(pipe(CARD_QUERY, prompt_name="query"))
    documents = torch.tensor(pipe(CARD_DOCUMENTS, prompt_name="document"))
    assert (documents @ query - torch.tensor(CARD_SIMILARITIES)).abs().max() <= 0.002

    st = SentenceTransformer(str(converted), trust_remote_code=True, device="cpu")
    similarities = st.similarity(st.encode_query(CARD_QUERY), st.encode_document(CARD_DOCUMENTS))[0]
    assert (similarities - torch.tensor(CARD_SIMILARITIES)).abs().max() <= 0.002


def test_matryoshka_dims_equal_the_reference_truncated_and_renormalised(reference, real_model):
    model = real_model
    full = reference.encode_document(SHORT, convert_to_tensor=True)
    for dim in (512, 256, 128):
        expected = F.normalize(full[:, :dim], dim=-1)
        actual = model.encode_document(SHORT, truncate_dim=dim, convert_to_numpy=False)
        assert actual.shape == (3, dim)
        assert (actual - expected).abs().max() <= 5e-5
