#!/usr/bin/env bash
# Installs Transformers.js (@huggingface/transformers) for Node into .cache/transformers-js, where
# tests/test_transformers_js.py finds it. --ignore-scripts: onnxruntime-node's install script downloads GPU
# binaries from outside the npm registry (it fails offline); its CPU binaries ship inside the npm package.
#
#   bash scripts/install_transformers_js.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "npm is not installed: apt-get install nodejs npm (Node >= 18)" >&2; exit 1; }
npm install --prefix .cache/transformers-js --ignore-scripts --no-audit --no-fund --silent "@huggingface/transformers@^4"
echo "Transformers.js: $(node -p "require('./.cache/transformers-js/node_modules/@huggingface/transformers/package.json').version")"
