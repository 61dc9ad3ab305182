# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""The corpus embedder's entry point; the code is embeddinggemma_tools/corpus.py (the tools' wing).

    python embed_corpus.py --model MODEL_DIR --input docs.jsonl --output embeddings/ [--local] (--help for all)

`import embed_corpus` gives that module itself (not a copy of its names), so what is set on one is set on the
other."""

import sys

from embeddinggemma_tools import corpus


if __name__ == "__main__":
    sys.exit(corpus.main())
sys.modules[__name__] = corpus
