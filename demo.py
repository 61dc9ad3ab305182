"""The main job: convert EmbeddingGemma into one self-contained folder, load it with AutoModel, embed a query and
documents with their task prompts, and rank the documents (at 768 dims and at a Matryoshka 256).

With EMBEDDINGGEMMA_REFERENCE set (a google/embeddinggemma-300m folder, e.g. from
../shared/fixtures/fetch_reference_checkpoints.py, or the Hub id) the real model is converted. Without it a tiny
random model is built offline instead, and the ranking means nothing; the demo says which it used.

    python demo.py [--output-dir demo-output]
"""

import argparse
import os
import sys
from pathlib import Path

from transformers import AutoModel

from convert_checkpoint import convert


QUERY = "Which planet is known as the Red Planet?"
DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"))
    args = parser.parse_args()

    source = os.environ.get("EMBEDDINGGEMMA_REFERENCE")
    if source:
        print(f"Using the real checkpoint EMBEDDINGGEMMA_REFERENCE={source}")
        converted = args.output_dir / "embeddinggemma-300m"
        matryoshka_dims = None
    else:
        from testing_embeddinggemma import build_tiny_sentence_transformer

        print(
            "EMBEDDINGGEMMA_REFERENCE is not set: building a TINY RANDOM model offline instead (its ranking is "
            "meaningless). Set it to google/embeddinggemma-300m's folder or Hub id for real embeddings."
        )
        source = str(args.output_dir / "tiny-sentence-transformers")
        if not (Path(source) / "modules.json").is_file():
            build_tiny_sentence_transformer(source)
        converted = args.output_dir / "tiny-embeddinggemma"
        matryoshka_dims = [48, 32, 16]

    convert(source, converted, overwrite=True, matryoshka_dims=matryoshka_dims)
    print(f"Converted {source} -> {converted}")

    model = AutoModel.from_pretrained(converted, trust_remote_code=True)
    query = model.encode_query(QUERY)
    documents = model.encode_document(DOCUMENTS)
    print(f"query {query.shape}, documents {documents.shape}")
    small = model.config.matryoshka_dims[min(2, len(model.config.matryoshka_dims) - 1)]
    scores = documents @ query
    scores_small = model.encode_document(DOCUMENTS, truncate_dim=small) @ model.encode_query(QUERY, truncate_dim=small)
    print(f"\n{QUERY}")
    for rank, i in enumerate(scores.argsort()[::-1], 1):
        print(f"  {rank}. {scores[i]:.4f} (at {small} dims {scores_small[i]:.4f})  {DOCUMENTS[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
