# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""The converter, split along its stages; `convert_checkpoint.py` (top level) is its entry point and orchestration.

- `common`: errors, `Source`, dtypes, verification floors;
- `sources`: reading files and one reader per `--from` kind (`READERS`);
- `build`: our model and tokenizer from a `Source`;
- `targets`: each `--to` target's writer and verifier side by side (`TARGETS`);
- `card`: the model card; `hub`: the upload.
"""
