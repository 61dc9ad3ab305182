import json

import pytest
from transformers import Gemma3TextConfig

from configuration_embeddinggemma import EMBEDDINGGEMMA_PROMPTS, EmbeddingGemmaConfig


def test_defaults_are_google_embeddinggemma_300m():
    config = EmbeddingGemmaConfig()
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (262_144, 768, 1152)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (24, 3, 1)
    assert (config.head_dim, config.query_pre_attn_scalar, config.max_position_embeddings) == (256, 256, 2048)
    assert [i for i, t in enumerate(config.layer_types) if t == "full_attention"] == [5, 11, 17, 23]
    assert (config.rope_theta, config.rope_local_base_freq) == (1e6, 1e4)
    assert config.sliding_window == 512 and config.attention_window == (256, 256)
    assert (config.dense_out_features, config.dense_bias, config.dense_activation) == ([3072, 768], False, "identity")
    assert config.matryoshka_dims == [768, 512, 256, 128] and config.embedding_dim == 768
    assert len(config.prompts) == 14 and config.prompts["query"] == "task: search result | query: "
    assert config.prompts["document"] == "title: none | text: "
    assert config.document_title_template.format(title="Mars") == "title: Mars | text: "
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (0, 1, 2)


def test_save_load_round_trips_leave_the_config_unchanged(tmp_path):
    config = EmbeddingGemmaConfig()
    first = config.to_dict()
    for round_trip in range(5):  # transformers once halved sliding_window on every reload (#47940)
        config.save_pretrained(tmp_path / str(round_trip))
        config = EmbeddingGemmaConfig.from_pretrained(tmp_path / str(round_trip))
    assert config.sliding_window == 512 and config.attention_window == (256, 256)
    saved = json.loads((tmp_path / "4" / "config.json").read_text())
    assert saved["sliding_window"] == 512
    ignored = {"transformers_version", "auto_map"}  # written by save_pretrained
    assert {k: v for k, v in config.to_dict().items() if k not in ignored} == {
        k: v for k, v in first.items() if k not in ignored
    }


@pytest.mark.parametrize("window", [4, 5, 8, 512, 4096])
def test_radius_equals_transformers_bidirectional_gemma3(window):
    # transformers keeps |i - j| < sliding_window // 2 + 1 after its __post_init__ rewrite.
    exclusive = Gemma3TextConfig(sliding_window=window, use_bidirectional_attention=True).sliding_window
    assert EmbeddingGemmaConfig(sliding_window=window).attention_window == (exclusive - 1, exclusive - 1)


def test_window_conventions():
    assert EmbeddingGemmaConfig(sliding_window=512, sliding_window_convention="t5gemma2").attention_window == (255, 256)
    assert EmbeddingGemmaConfig(sliding_window=4096, sliding_window_convention="t5gemma").attention_window == (
        4096,
        4096,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_hidden_layers": 3, "layer_types": ["full_attention"] * 2}, "layer_types has 2 entries"),
        ({"layer_types": ["causal"] * 24}, r"layer_types contains \['causal'\]"),
        ({"num_attention_heads": 3, "num_key_value_heads": 2}, "not a multiple"),
        ({"sliding_window_convention": "gemma2"}, "sliding_window_convention='gemma2' is not supported"),
        ({"pooling_mode": "first"}, "pooling_mode=.first. is not supported"),
        ({"sliding_window": True}, "sliding_window=True must be a positive int"),
        ({"matryoshka_dims": [1024, 768]}, r"matryoshka_dims \[1024\] must be .* no larger than .* 768"),
        ({"default_prompt_name": "nope"}, "default_prompt_name='nope' is not one of the prompts"),
        ({"document_title_template": "title: x | text: "}, "must contain"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingGemmaConfig(**kwargs)


def test_prompts_are_the_reference_table():
    assert list(EMBEDDINGGEMMA_PROMPTS) == [
        "query",
        "document",
        "BitextMining",
        "Clustering",
        "Classification",
        "InstructionRetrieval",
        "MultilabelClassification",
        "PairClassification",
        "Reranking",
        "Retrieval",
        "Retrieval-query",
        "Retrieval-document",
        "STS",
        "Summarization",
    ]
