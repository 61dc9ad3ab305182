import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The precision probe's cache (precision_embeddinggemma.py) goes to a folder of this run, not the user's home.
os.environ.setdefault("EMBEDDINGGEMMA_CACHE", tempfile.mkdtemp(prefix="embeddinggemma-test-cache-"))

from testing_embeddinggemma import build_tiny_sentence_transformer, train_tiny_tokenizer  # noqa: E402


REFERENCE = os.environ.get("EMBEDDINGGEMMA_REFERENCE")
requires_checkpoint = pytest.mark.skipif(
    not REFERENCE,
    reason="EMBEDDINGGEMMA_REFERENCE is not set: point it at google/embeddinggemma-300m (a folder from "
    "../shared/fixtures/fetch_reference_checkpoints.py, or the Hub id) to run the real-checkpoint tests.",
)

slow = pytest.mark.slow  # pytest.ini: left out of the default run, run by CI


@pytest.fixture(scope="session")
def real_reference():
    """SentenceTransformer on the real checkpoint: loaded once per session for every test that compares with it."""
    if not REFERENCE:
        pytest.skip(requires_checkpoint.kwargs["reason"])
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(REFERENCE, device="cpu")


@pytest.fixture(scope="session")
def real_converted(tmp_path_factory):
    """The real checkpoint converted once per session (the converter verifies it against the reference)."""
    if not REFERENCE:
        pytest.skip(requires_checkpoint.kwargs["reason"])
    from convert_checkpoint import convert

    return convert(REFERENCE, tmp_path_factory.mktemp("real") / "embeddinggemma-300m")


@pytest.fixture(scope="session")
def real_model(real_converted):
    """The converted real checkpoint through AutoModel (float32, eval), loaded once per session."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(real_converted, trust_remote_code=True).eval()


# Texts for the tiny tokenizer: different lengths, so batches are padded and longer than the window (+-2).
TEXTS = [
    "the man is playing guitar on the red planet mars in the blue sky with a dog",
    "a dog",
    "Which planet is known as the Red Planet?",
    "jupiter , a gas giant , is the largest planet in our solar system",
]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory):
    """A tiny checkpoint in the google/embeddinggemma-300m layout, built by transformers + sentence-transformers."""
    folder = tmp_path_factory.mktemp("st") / "tiny-embeddinggemma-st"
    build_tiny_sentence_transformer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_converted_dir(tiny_st_dir, tmp_path_factory):
    from convert_checkpoint import convert

    folder = tmp_path_factory.mktemp("converted") / "tiny-embeddinggemma"
    return convert(str(tiny_st_dir), folder, matryoshka_dims=[48, 32, 16])


def run_isolated(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter whose working directory is `cwd` and which cannot import this repo's
    modules (not from sys.path, not through an editable install), so only the code saved in a model folder runs."""
    prelude = f"""
        import importlib.abc, sys
        REPO = {str(REPO)!r}
        OURS = {{"configuration_embeddinggemma", "modeling_embeddinggemma", "pipeline_embeddinggemma",
                 "convert_checkpoint", "testing_embeddinggemma"}}
        sys.path[:] = [p for p in sys.path if p not in ("", ".", REPO, REPO + "/tests")]

        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in OURS:
                    raise ImportError(f"{{name}} must not be imported from the repository in this test")

        sys.meta_path.insert(0, _Block())
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
