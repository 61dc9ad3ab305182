#!/usr/bin/env bash
# Sets up a virtual environment with everything the demo and the tests need. Idempotent: a second run only checks.
#
#   bash setup.sh           .venv: the latest transformers and sentence-transformers, and llama.cpp's Python bindings
#                           (built once for this CPU by scripts/install_llama_cpp.sh, ~15 minutes on 2 cores, with a
#                           progress line a minute, then cached)
#   bash setup.sh --oldest  .venv-oldest: the oldest versions we claim to support (see docs/compatibility.md), with
#                           optimum-onnx for sentence-transformers' ONNX backend (optimum-onnx needs transformers < 4.58)
#   bash setup.sh --integrations  .venv-integrations: the latest releases plus the embedding libraries of the
#                           `integrations` extra (LangChain, LlamaIndex, Chroma, Haystack, mteb), whose pins on
#                           huggingface_hub (< 2) differ from .venv's; tests/test_embedding_libraries.py runs their snippets
#
# torch is pinned to the CPU build here (an unpinned torch pulls a multi-GB CUDA build); install_requires keeps a range.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
if [ "${1:-}" = "--oldest" ]; then
  venv=.venv-oldest
  pins=("transformers==4.57.1" "sentence-transformers==5.5.0" "optimum-onnx[onnxruntime]==0.1.0")
  extras="test"
elif [ "${1:-}" = "--integrations" ]; then
  venv=.venv-integrations
  pins=()
  extras="test,integrations"
else
  venv=.venv
  pins=()
  extras="test"
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$TORCH" -e ".[$extras]" "${pins[@]}"
# transformers' own common model tests (ModelTesterMixin) from its source release; not fatal offline (they skip).
"$venv/bin/python" scripts/fetch_transformers_tests.py || echo "warning: transformers' common tests could not be fetched; tests/test_transformers_common.py will skip" >&2
# Transformers.js for Node (tests/test_transformers_js.py), when npm is there; not fatal.
if [ "$venv" = .venv ] && command -v npm >/dev/null; then
  bash scripts/install_transformers_js.sh || echo "warning: Transformers.js could not be installed; its test will skip" >&2
fi
if [ "$venv" = .venv ] && [ "${EMBEDDINGGEMMA_SKIP_LLAMA_CPP:-0}" != 1 ]; then
  # Not fatal: without a compiler or cmake the GGUF runtime tests skip, saying how to get the bindings.
  bash scripts/install_llama_cpp.sh "$venv" || echo "warning: llama.cpp's Python bindings could not be built; the tests that run GGUF files in llama.cpp will skip" >&2
fi
