# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""The tools' wing: code shared by the converter, the trainer and the corpus embedder, which model folders never
carry. The remote-code files (`*_embeddinggemma.py` at the top level) stay flat beside `config.json` and import
nothing from here.

- `files`: atomic writes (files and folders), the lock of an output folder, process liveness, file and folder
  fingerprints;
- `convert`: the converter's stages (sources, build, targets with writer and verifier side by side, model card,
  hub); `convert_checkpoint.py` at the top level is its entry point;
- `train`: the training recipe (options, data, teacher cache, head fit, losses, budget, evaluation, souping);
  `train_embeddinggemma.py` at the top level is its entry point;
- `corpus`: resumable, exactly-once corpus embedding into Parquet (locally or with Ray Data); `embed_corpus.py` at
  the top level is its entry point;
- `retrieval`: retrieval evaluation on BEIR-layout folders.
"""
