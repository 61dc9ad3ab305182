# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""The model card (README.md) a converted folder carries: usage per target, parity figures."""

from __future__ import annotations

import json
from pathlib import Path

from configuration_embeddinggemma import EmbeddingGemmaConfig
from embeddinggemma_tools.convert.common import Source
from embeddinggemma_tools.convert.export import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    gguf_file_name,
)
from embeddinggemma_tools.convert.targets import Export, st_onnx_backend_applies


def public_name(source: str) -> str:
    """How the model card names a source: a Hub id as is, a local path never (a card may be published)."""
    if Path(source).expanduser().exists() or "/" not in source or source.startswith((".", "/", "~")):
        return "a local checkpoint"
    return f"`{source}`"


def write_model_card(
    folder: Path,
    config: EmbeddingGemmaConfig,
    source: Source,
    export: Export,
    name: str,
    figures: dict[str, dict],
    base_model: str | None,
) -> None:
    """README.md: Hub front matter (library, tags for each integration), the files of each variant with how to use
    them (transformers, sentence-transformers, ONNX Runtime, Transformers.js, llama.cpp), and the parity figures
    measured at conversion. `name` is the Hub repo id or the output folder's name."""
    targets = export.targets
    library = "sentence-transformers" if "sentence-transformers" in targets else "transformers"
    if export.base is None:
        library = "transformers.js" if "onnx" in targets else "gguf"  # as onnx-community / GGUF repos declare
    tags = ["embeddinggemma", "sentence-similarity", "feature-extraction", "text-embeddings", "matryoshka"]
    if "sentence-transformers" in targets:
        tags += ["sentence-transformers", "text-embeddings-inference"]
    if "onnx" in targets:
        tags += ["onnx", "transformers.js"]
    if "gguf" in targets:
        tags += ["gguf", "llama.cpp"]
    meta = ["---", f"library_name: {library}", "pipeline_tag: sentence-similarity", "license: gemma", "tags:"]
    meta += [f"- {tag}" for tag in tags]
    if base_model:
        meta += ["base_model:", f"- {base_model}"]
    meta.append("---")
    sections = [model_card_usage(name, target, config, export, figures.get(target)) for target in targets]
    head = (
        ""
        if not source.added_head
        else (
            "\n**This encoder's embedding head is freshly initialised: fine-tune it before use** "
            "(see the training recipe of the embeddinggemma package).\n"
        )
    )
    files = "\n".join(f"| `{file}` | {what} |" for file, what in model_card_files(export))
    body = f"""
# {name}

An EmbeddingGemma-architecture text embedding model: bidirectional Gemma 3 encoder ({config.num_hidden_layers}
layers, hidden {config.hidden_size}) -> mean pooling -> Dense {" -> ".join(map(str, config.dense_out_features))}
-> L2 normalisation, {config.embedding_dim}-d embeddings, Matryoshka dims {config.matryoshka_dims}.
Converted from {public_name(source.name)} (`--from {source.kind}`) by the embeddinggemma package's
`convert_checkpoint.py` (`--to {",".join(targets)}`).
{head}
## Files

| file | what it is |
|---|---|
{files}

Prompts: `task: search result | query: ` for queries, `title: {{title | none}} | text: ` for documents; the full
table is in `config_sentence_transformers.json`. Runtimes other than sentence-transformers and this model's own
`encode` do not add them: prepend them yourself. Use float32 or bfloat16: float16 overflows.

{chr(10).join(sections)}
## Conversion notes

{chr(10).join(f"- {note}" for note in source.notes) or "- renamed only"}
"""
    (folder / "README.md").write_text("\n".join(meta) + "\n" + body)


def model_card_files(export: Export) -> list[tuple[str, str]]:
    targets, options = export.targets, export.options
    files = []
    if "embeddinggemma" in targets:
        files += [
            ("config.json", "the model's config (transformers reads it as Gemma 3 where it can)"),
            ("model.safetensors", "the encoder and the Dense head, float32 or bfloat16"),
            ("*_embeddinggemma.py", "the model's code (`trust_remote_code=True`)"),
        ]
    if "sentence-transformers" in targets or ("onnx" in targets and export.base is None):
        files += [
            ("config.json", "Gemma 3 encoder config (`Gemma3TextModel`, bidirectional)"),
            ("modules.json, 1_Pooling/, 2_Dense/, 3_Dense/", "sentence-transformers' pooling and Dense head"),
        ]
    if "sentence-transformers" in targets:
        files.append(("model.safetensors", "the encoder's weights"))
    files.append(("tokenizer.json, tokenizer_config.json", "the tokenizer (adds `<bos>` and `<eos>`)"))
    if "onnx" in targets:
        files += [
            (
                f"onnx/{ONNX_FILE}",
                "ONNX, float32: inputs `input_ids`, `attention_mask`; outputs `last_hidden_state`, "
                "`sentence_embedding` (pooled, Dense head, normalised)",
            ),
            (f"onnx/{ONNX_INT8_FILE}", "ONNX, int8 weights (onnxruntime dynamic quantization), same inputs/outputs"),
        ]
    if "gguf" in targets:
        files += [
            (
                gguf_file_name(options.name, t),
                f"GGUF {t} for llama.cpp / Ollama (`gemma-embedding`, Dense head included)",
            )
            for t in options.gguf_types
        ]
    return files


def _parity(figures: dict | None) -> str:
    if not figures:
        return "Not verified at conversion."
    if figures.get("verified") is False:
        return f"Not verified at conversion: {figures['reason']}."
    if "compared" in figures:
        return (
            f"Verified at conversion against the source framework's own model ({figures['compared']}, "
            f"{figures['texts']} texts, {figures['tokens']} tokens, longest {figures['longest']}): minimum cosine "
            f"{figures['min_cosine']}, maximum absolute difference {figures['max_abs_diff']:.3g} in "
            f"{figures['dtype']}."
        )
    lines = []
    for key, value in figures.items():
        if key == "verified":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
        lines.append(f"- `{key}`: {value}" if "." in key or "=" in key else f"- {key.replace('_', ' ')}: {value}")
    return "Verified at conversion against the float32 model:\n\n" + "\n".join(lines)


def model_card_usage(name: str, target: str, config: EmbeddingGemmaConfig, export: Export, figures) -> str:
    """One variant's usage section of the model card; the Python blocks run as they are (tests run them)."""
    query = "task: search result | query: Which planet is known as the Red Planet?"
    documents = [
        "title: none | text: Mars is often referred to as the Red Planet.",
        "title: none | text: Venus is Earth's twin.",
    ]
    parity = _parity(figures)
    if target == "sentence-transformers":
        return f"""## sentence-transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{name}")
query = model.encode_query("Which planet is known as the Red Planet?")
documents = model.encode_document(["Mars is often referred to as the Red Planet.", "Venus is Earth's twin."])
print(model.similarity(query, documents))
```

{parity}
"""
    if target == "embeddinggemma":
        return f"""## transformers

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{name}", trust_remote_code=True)
query = model.encode_query("Which planet is known as the Red Planet?")
documents = model.encode_document(["Mars is often referred to as the Red Planet.", "Venus is Earth's twin."])
print(documents @ query)  # cosine similarities; truncate_dim={config.matryoshka_dims[-1]} for a small index
```

Also `SentenceTransformer("{name}", trust_remote_code=True)` (sentence-transformers >= 5.5) and
`pipeline("sentence-embeddings", model="{name}", trust_remote_code=True)`.

{parity}
"""
    if target == "onnx":
        st_backend = ""
        if st_onnx_backend_applies(export, config):
            st_backend = f"""
sentence-transformers (with `pip install optimum-onnx`) runs the same file:
`SentenceTransformer("{name}", backend="onnx", model_kwargs={{"file_name": "onnx/{ONNX_FILE}"}})`.
"""
        return f"""## ONNX Runtime

Read the `sentence_embedding` output: it is pooled, passed through the Dense head and normalised.
`last_hidden_state` alone (mean-pooled, as some pipelines do) skips the head and gives other vectors.

```python
import numpy as np
import onnxruntime
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

folder = snapshot_download("{name}")
tokenizer = AutoTokenizer.from_pretrained(folder)
session = onnxruntime.InferenceSession(f"{{folder}}/onnx/{ONNX_FILE}")  # or onnx/{ONNX_INT8_FILE} (int8)
texts = {json.dumps([query, *documents], indent=4)}
batch = tokenizer(texts, padding=True, return_tensors="np")
feeds = {{name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}}
(embeddings,) = session.run(["sentence_embedding"], feeds)
print(embeddings[1:] @ embeddings[0])  # cosine similarities of the documents to the query
```
{st_backend}
Transformers.js (`dtype: "q8"` loads `onnx/{ONNX_INT8_FILE}`):

```js
import {{ AutoModel, AutoTokenizer }} from "@huggingface/transformers";

const tokenizer = await AutoTokenizer.from_pretrained("{name}");
const model = await AutoModel.from_pretrained("{name}", {{ dtype: "fp32" }});
const inputs = await tokenizer({json.dumps([query, *documents])}, {{ padding: true }});
const {{ sentence_embedding }} = await model(inputs);
```

{parity}
"""
    file = gguf_file_name(export.options.name, export.options.gguf_types[-1])
    return f"""## llama.cpp and Ollama (GGUF)

llama.cpp returns the Dense head's output **unnormalised**: L2-normalise each vector before comparing (cosine).
It adds no prompts: prepend them.

```bash
llama-embedding -m {file} --pooling mean --embd-normalize 2 \\
    -p "{query}"
```

```python
import numpy as np
from huggingface_hub import hf_hub_download
from llama_cpp import Llama

llm = Llama(model_path=hf_hub_download("{name}", "{file}"), embedding=True, verbose=False)
texts = {json.dumps([query, *documents], indent=4)}
embeddings = np.array(llm.embed(texts))
embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)  # llama.cpp does not normalise
print(embeddings[1:] @ embeddings[0])
```

Ollama: `ollama create NAME -f Modelfile` with `FROM ./{file}` in the Modelfile, then `POST /api/embed`; normalise
the vectors if your client does not.

{parity}
"""
