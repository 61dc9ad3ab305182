# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""Pipelines for EmbeddingGemma, registered through the config's `custom_pipelines`:

    pipe = pipeline("sentence-embeddings", model=path, trust_remote_code=True)
    pipe("Which planet is known as the Red Planet?", prompt_name="query")      # -> [768 floats]
    pipe(["a", "b"], prompt_name="document", truncate_dim=256, batch_size=8)   # -> [[256 floats], [256 floats]]
    pipe({"source_sentence": "query text", "sentences": ["doc 1", "doc 2"]})   # -> [cosine, cosine]

`pipeline("feature-extraction", model=path, trust_remote_code=True)` uses the same class, so it returns the final
sentence embedding of each input, not token states.
"""

import torch
import torch.nn.functional as F
from transformers import Pipeline


class SentenceEmbeddingPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, prompt_name=None, prompt=None, truncate_dim=None, return_tensors=None, **kwargs):
        preprocess_params = {"prompt": self.model.config.prompt_for(prompt_name, prompt)}  # fails early on bad names
        forward_params = {}
        if truncate_dim is not None:
            forward_params["truncate_dim"] = self.model.check_truncate_dim(truncate_dim) or truncate_dim
        postprocess_params = {"return_tensors": bool(return_tensors)}
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            return self.similarity(inputs, **kwargs)
        if not isinstance(inputs, str) and not (
            isinstance(inputs, (list, tuple)) and all(isinstance(text, str) for text in inputs)
        ):
            raise TypeError(
                "The sentence-embeddings pipeline takes a string, a list of strings, or "
                "{'source_sentence': str, 'sentences': [str, ...]}; got "
                f"{type(inputs).__name__}."
            )
        if isinstance(inputs, tuple):
            inputs = list(inputs)  # transformers' Pipeline batches lists only
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, text, prompt=""):
        max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        return self.tokenizer(prompt + text, truncation=True, max_length=max_length, return_tensors="pt")

    def _forward(self, model_inputs, truncate_dim=None):
        return self.model(**model_inputs, truncate_dim=truncate_dim)

    def postprocess(self, model_outputs, return_tensors=False):
        embedding = model_outputs["sentence_embedding"][0]  # (dim,)
        return embedding if return_tensors else embedding.float().tolist()

    def similarity(self, inputs, prompt_name=None, prompt=None, truncate_dim=None, **kwargs):
        """Cosine similarity of `inputs["source_sentence"]` to each of `inputs["sentences"]` (the Hub's
        sentence-similarity widget format). The prompt, if any, applies to every text."""
        if set(inputs) != {"source_sentence", "sentences"}:
            raise ValueError(
                f"Expected {{'source_sentence': str, 'sentences': [str, ...]}}, got keys {sorted(inputs)}."
            )
        source, sentences = inputs["source_sentence"], inputs["sentences"]
        if not isinstance(source, str) or not isinstance(sentences, (list, tuple)):
            raise TypeError(
                "Expected {'source_sentence': str, 'sentences': [str, ...]}, got source_sentence "
                f"{type(source).__name__} and sentences {type(sentences).__name__}."
            )
        bad = [(i, type(s).__name__) for i, s in enumerate(sentences) if not isinstance(s, str)]
        if bad:
            raise TypeError(f"sentences must all be strings; items (index, type) {bad[:5]} are not.")
        if not sentences:
            return []
        texts = [inputs["source_sentence"], *inputs["sentences"]]
        embeddings = torch.tensor(
            self.__call__(texts, prompt_name=prompt_name, prompt=prompt, truncate_dim=truncate_dim, **kwargs)
        )
        return F.cosine_similarity(embeddings[:1], embeddings[1:]).tolist()
