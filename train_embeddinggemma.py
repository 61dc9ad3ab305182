# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""The training recipe's entry point; the code is embeddinggemma_tools/train.py (the tools' wing).

    python train_embeddinggemma.py {train,soup,evaluate,check-held-out} ... (--help for each)

`import train_embeddinggemma` gives that module itself (not a copy of its names), so what is set on one is set on
the other."""

import sys

from embeddinggemma_tools import train


if __name__ == "__main__":
    sys.exit(train.main())
sys.modules[__name__] = train
