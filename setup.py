from pathlib import Path

from setuptools import setup


setup(
    name="embeddinggemma",
    version="0.1.0",
    description="EmbeddingGemma for transformers: one model with its embedding head, exact converters, Hub-ready.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    py_modules=[
        "configuration_embeddinggemma",
        "modeling_embeddinggemma",
        "packed_embeddinggemma",
        "encoding_embeddinggemma",
        "quantization_embeddinggemma",
        "calibration_embeddinggemma",
        "precision_embeddinggemma",
        "pipeline_embeddinggemma",
        "convert_checkpoint",
        "embed_corpus",
        "train_embeddinggemma",
        "testing_embeddinggemma",
    ],
    packages=["embeddinggemma_tools", "embeddinggemma_tools.convert"],
    install_requires=[
        "torch>=2.4",
        "transformers>=4.57,<6",
        "safetensors>=0.4",
        "huggingface_hub>=0.34",
        "sentencepiece>=0.2",
        "numpy",
        "tqdm",
        "pyarrow>=17",
    ],
    extras_require={
        "st": ["sentence-transformers>=5.5"],
        "gguf": ["gguf>=0.17"],
        "ray": ["ray[data]>=2.40", "pyarrow>=17"],
        "train": ["sentence-transformers>=5.5", "datasets>=2.19", "accelerate>=1.1"],
        "bench": ["sentence-transformers>=5.5", "onnx>=1.16", "onnxruntime>=1.18", "scipy"],
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # sentence-transformers' ONNX backend (SentenceTransformer(folder, backend="onnx")); optimum-onnx 0.1 needs
        # transformers < 4.58
        "st-onnx": ["sentence-transformers>=5.5", "optimum-onnx[onnxruntime]>=0.1"],
        # llama.cpp's Python bindings, built from source; on machines that list AMX without allowing it, use
        # scripts/install_llama_cpp.sh instead (docs/conversion.md)
        "llama": ["llama-cpp-python>=0.3.16"],
        # the libraries whose snippets docs/integrations.md shows (tests/test_embedding_libraries.py runs them)
        "integrations": [
            "sentence-transformers>=5.5",
            "langchain-huggingface>=0.3",
            "llama-index-embeddings-huggingface>=0.5",
            "chromadb>=1.0",
            "haystack-ai>=2.10",
            "sentence-transformers-haystack>=2.0",  # Haystack's sentence-transformers embedders (haystack-ai 3)
            "mteb>=2.0",
        ],
        "test": [
            "pytest>=8",
            "parameterized",  # transformers' common tests (tests/test_transformers_common.py)
            "peft>=0.13",
            "sentence-transformers>=5.5",
            "gguf>=0.17",
            "protobuf",
            "accelerate>=1.1",
            "ray[data]>=2.40",
            "pyarrow>=17",
            "datasets>=2.19",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "onnxscript>=0.2",
            "ruff==0.17.6",
        ],
    },
    entry_points={
        "console_scripts": [
            "embeddinggemma-convert=convert_checkpoint:main",
            "embeddinggemma-embed-corpus=embeddinggemma_tools.corpus:main",
            "embeddinggemma-train=embeddinggemma_tools.train:main",
        ]
    },
)
