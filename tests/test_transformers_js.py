"""The converter's ONNX export in Transformers.js (Node), as the model card's snippet calls it: the tokenizer and the
float32 model from the folder, a padded batch with the query and document prompts, `sentence_embedding` read from
the outputs; checked against `encode_query` / `encode_document` (float32: 1e-4) and, for `dtype: "q8"`, min cosine
0.99. Runs when Node and Transformers.js are installed (`bash scripts/install_transformers_js.sh`); skips otherwise,
saying how."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import REPO
from convert_checkpoint import convert
from embeddinggemma_tools.convert import export as ex


PACKAGE = REPO / ".cache" / "transformers-js" / "node_modules" / "@huggingface" / "transformers"

if shutil.which("node") is None:
    pytest.skip(
        "Node is not installed (apt-get install nodejs npm), so Transformers.js cannot run", allow_module_level=True
    )
if not PACKAGE.is_dir():
    pytest.skip(
        f"Transformers.js is not installed in {PACKAGE.parent.parent}: bash scripts/install_transformers_js.sh",
        allow_module_level=True,
    )
if not all(ex._importable(name) for name in ("onnx", "onnxscript", "onnxruntime")):
    pytest.skip("--to onnx needs onnx, onnxscript and onnxruntime", allow_module_level=True)

SCRIPT = """
import { AutoModel, AutoTokenizer, env } from "@huggingface/transformers";

env.allowRemoteModels = false;  // no network: the folder only
env.localModelPath = process.argv[2];
const [name, dtype, texts] = [process.argv[3], process.argv[4], JSON.parse(process.argv[5])];
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModel.from_pretrained(name, { dtype });
const inputs = await tokenizer(texts, { padding: true });
const { sentence_embedding } = await model(inputs);
console.log(JSON.stringify(sentence_embedding.tolist()));
"""


@pytest.fixture(scope="module")
def onnx_folder(tiny_st_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers-js")
    convert(str(tiny_st_dir), root / "tiny-onnx", to="embeddinggemma,onnx", matryoshka_dims=[48, 32, 16])
    return root, "tiny-onnx"


def run_in_node(root, name, dtype, texts) -> np.ndarray:
    script = REPO / ".cache" / "transformers-js" / "embed.mjs"
    script.write_text(SCRIPT)
    result = subprocess.run(
        ["node", str(script), f"{root}/", name, dtype, json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.array(json.loads(result.stdout.strip().splitlines()[-1]))


def test_transformers_js_gives_the_embeddings_with_prompts(onnx_folder):
    from transformers import AutoModel

    root, name = onnx_folder
    model = AutoModel.from_pretrained(root / name, trust_remote_code=True)
    query = "Which planet is known as the Red Planet?"
    documents = ["Mars, known for its reddish appearance,\nis often called the Red Planet.", "Venus is Earth's twin."]
    prompts = model.config.prompts
    texts = [prompts["query"] + query] + [prompts["document"] + text for text in documents]
    expected = np.concatenate([model.encode_query([query]), model.encode_document(documents)])
    float32 = run_in_node(root, name, "fp32", texts)
    np.testing.assert_allclose(float32, expected, atol=1e-4)
    q8 = run_in_node(root, name, "q8", texts)
    cosine = (q8 * expected).sum(axis=1) / np.linalg.norm(q8, axis=1)
    assert cosine.min() >= 0.99, cosine
