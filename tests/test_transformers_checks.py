"""A compact equivalent of transformers' own common model checks (ModelTesterMixin, ConfigTester) for the model as
`AutoModel.from_pretrained(folder, trust_remote_code=True)` returns it: output flags from the config, attention
switching through transformers' attention interface, save/load, batching, eager = sdpa = flex, and export, compile
and trace of the model as loaded (eval mode, whose eager forward takes the packed path), each checked against eager
sentence embeddings on padded batches of other shapes than the example (float32: 1e-5)."""

import inspect
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import modeling_embeddinggemma
from conftest import REPO, slow
from helpers import ATOL, count_calls, make_batch, tiny_model


IMPLEMENTATIONS = ["eager", "sdpa", "flex_attention"]


def padded_batches():
    """The example a trace/export sees (no padding at all) and batches of other shapes, padded, with a text longer
    than the tiny window."""
    return make_batch([16, 16], seed=1), make_batch([20, 5, 11], seed=2), make_batch([7], seed=3)


class SentenceEmbedding(torch.nn.Module):
    """What an exporter or tracer sees: tensors in, the sentence embedding out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding


@pytest.fixture()
def loaded(tiny_converted_dir):
    """The model as a user gets it: AutoModel with remote code, eval mode, SDPA, packed path on."""
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    assert not model.training and model.config._attn_implementation == "sdpa" and model.config.use_packed_path
    return model


def eager_embeddings(model, batches):
    with torch.no_grad():
        return [model(input_ids=ids, attention_mask=mask).sentence_embedding for ids, mask in batches]


# ----------------------------------------------------------------------------------------------------------------
# Output flags, return_dict and the tokenizer attribute
# ----------------------------------------------------------------------------------------------------------------


def test_output_flags_come_from_the_config(tiny_converted_dir):
    ids, mask = make_batch()
    layers = 3
    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True, output_hidden_states=True)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        assert out.hidden_states is not None and len(out.hidden_states) == layers + 1
        assert model(input_ids=ids, attention_mask=mask, output_hidden_states=False).hidden_states is None
        assert model.model(input_ids=ids, attention_mask=mask).hidden_states is not None  # the encoder alone too

    model = AutoModel.from_pretrained(
        tiny_converted_dir, trust_remote_code=True, attn_implementation="eager", output_attentions=True
    )
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    assert len(out.attentions) == layers and out.attentions[0].shape == (4, 2, 16, 16)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(4, 2, 16))  # probabilities

    model = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True, return_dict=False)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    assert isinstance(out, tuple) and out[0].shape == (4, 48) and out[1].shape == (4, 16, 64)
    with torch.no_grad():
        assert isinstance(model.model(input_ids=ids, attention_mask=mask), tuple)
        assert model(input_ids=ids, attention_mask=mask, return_dict=True).sentence_embedding.shape == (4, 48)


def test_tokenizer_is_an_attribute_like_any_other(loaded):
    assert hasattr(loaded, "tokenizer") and loaded.tokenizer("a dog")["input_ids"][0] == 2
    bare = tiny_model()
    assert not hasattr(bare, "tokenizer") and getattr(bare, "tokenizer", None) is None
    with pytest.raises(AttributeError, match=r"model.tokenizer = AutoTokenizer.from_pretrained"):
        bare.tokenizer  # noqa: B018
    dict(inspect.getmembers(bare))  # walks every attribute without raising
    ids, mask = make_batch([5, 3])
    torch.jit.trace(SentenceEmbedding(bare), (ids, mask))  # a wrapper's trace inspects the model's attributes


# ----------------------------------------------------------------------------------------------------------------
# Attention: transformers' interface, switching, honest flags, eager = sdpa = flex
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [pytest.param(True, marks=slow), False])  # packed + flex compiles: ~30 s
def test_eager_sdpa_and_flex_agree_on_both_paths(fast):
    model = tiny_model()
    model.config.use_packed_path = fast
    batches = padded_batches()
    results = {}
    for implementation in IMPLEMENTATIONS:
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation == model.model.config._attn_implementation
        results[implementation] = eager_embeddings(model, batches)
    for implementation in IMPLEMENTATIONS[1:]:
        for got, expected in zip(results[implementation], results["eager"]):
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_set_attn_implementation_really_switches(monkeypatch):
    model = tiny_model()
    calls = count_calls(monkeypatch, modeling_embeddinggemma, "eager_attention_forward")
    ids, mask = make_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        assert calls == []  # sdpa
        model.set_attn_implementation("eager")
        model(input_ids=ids, attention_mask=mask)
        assert len(calls) == model.config.num_hidden_layers
        calls.clear()
        model.set_attn_implementation("sdpa")
        model(input_ids=ids, attention_mask=mask)
    assert calls == []


def test_supports_flags_are_honest(tiny_converted_dir):
    ids, mask = make_batch()
    expected = eager_embeddings(AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True), [(ids, mask)])[0]
    model_class = type(AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True))
    claimed = {"sdpa": model_class._supports_sdpa, "flex_attention": model_class._supports_flex_attn}
    assert all(claimed.values())
    for implementation in ["eager", *claimed]:
        model = AutoModel.from_pretrained(
            tiny_converted_dir, trust_remote_code=True, attn_implementation=implementation
        )
        assert model.config._attn_implementation == implementation
        torch.testing.assert_close(eager_embeddings(model, [(ids, mask)])[0], expected, atol=ATOL, rtol=0)
    assert model_class._supports_flash_attn is False  # not claimed, so transformers refuses it with its own message
    with pytest.raises((ValueError, ImportError)):
        AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True, attn_implementation="flash_attention_2")
    assert model_class._can_compile_fullgraph is True  # checked by test_compile_fullgraph_as_loaded


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: flash-attention and variable-length "
    "attention are GPU kernels; the GPU checks run where one is lent",
)
def test_packed_path_on_gpu_matches_the_reference_path():
    model = tiny_model().to("cuda")
    batches = [(ids.cuda(), mask.cuda()) for ids, mask in padded_batches()]
    fast = eager_embeddings(model, batches)
    model.config.use_packed_path = False
    for got, expected in zip(fast, eager_embeddings(model, batches)):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# The path: chosen once, logged, stepping aside under trace, export and compile
# ----------------------------------------------------------------------------------------------------------------


def test_path_is_chosen_in_one_place_and_logged(caplog):
    from transformers.utils import logging as hf_logging

    model = tiny_model()
    assert model.model.select_path() == "packed"
    assert model.model.select_path(output_hidden_states=True) == "reference"
    model.config.use_packed_path = False
    assert model.model.select_path() == "reference"
    model.config.use_packed_path = True
    model.set_attn_implementation("eager")
    assert model.model.select_path() == "reference"
    model.set_attn_implementation("sdpa")
    model.train()
    assert model.model.select_path() == "reference"
    hf_logging.set_verbosity_info()
    try:
        with caplog.at_level(logging.INFO):
            model.model.select_path()
    finally:
        hf_logging.set_verbosity_warning()
    # info_once: said once per reason and process (another test may have said it first)
    assert "reference path: training mode" in caplog.text or not caplog.records


def test_jit_trace_as_loaded_never_bakes_in_the_example(loaded):
    example, *others = padded_batches()
    traced = torch.jit.trace(SentenceEmbedding(loaded), example)  # unpadded and shorter than the window: no mask
    for (ids, mask), expected in zip(others, eager_embeddings(loaded, others)):
        torch.testing.assert_close(traced(ids, mask), expected, atol=ATOL, rtol=0)


def test_torch_export_as_loaded_with_dynamic_batch_and_length(loaded):
    example, *others = padded_batches()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=loaded.config.max_position_embeddings)
    program = torch.export.export(
        SentenceEmbedding(loaded), example, dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length})
    )
    exported = program.module()
    for (ids, mask), expected in zip(others, eager_embeddings(loaded, others)):
        torch.testing.assert_close(exported(ids, mask), expected, atol=ATOL, rtol=0)


def test_onnx_export_dynamo_as_loaded(loaded, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript (the test extra)")
    onnxruntime = pytest.importorskip("onnxruntime")
    example, *others = padded_batches()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=loaded.config.max_position_embeddings)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        SentenceEmbedding(loaded),
        example,
        str(path),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for (ids, mask), expected in zip(others, eager_embeddings(loaded, others)):
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=ATOL, rtol=0)


@slow
def test_compile_fullgraph_as_loaded(loaded):
    torch._dynamo.reset()
    compiled = torch.compile(loaded, fullgraph=True, dynamic=True)
    example, *others = padded_batches()
    with torch.no_grad():
        for ids, mask in [example, *others]:
            expected = eager_embeddings(loaded, [(ids, mask)])[0]
            got = compiled(input_ids=ids, attention_mask=mask).sentence_embedding
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Save and load, batching, missing weights, AutoTokenizer
# ----------------------------------------------------------------------------------------------------------------


def test_save_and_load_keeps_everything_and_the_tokenizer(loaded, tmp_path):
    loaded.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "packed_embeddinggemma.py",
        "encoding_embeddinggemma.py",
        "quantization_embeddinggemma.py",
        "calibration_embeddinggemma.py",
        "pipeline_embeddinggemma.py",
    } <= files
    again = AutoModel.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    texts = ["a dog", "the red planet mars in the blue sky"]
    torch.testing.assert_close(
        torch.from_numpy(again.encode(texts)), torch.from_numpy(loaded.encode(texts)), atol=0, rtol=0
    )
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True, device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(st.encode(texts)), torch.from_numpy(loaded.encode(texts)), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("fast", [True, False])
def test_batching_equivalence(fast):
    model = tiny_model()
    model.config.use_packed_path = fast
    ids, mask = make_batch([16, 9, 3, 12])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).sentence_embedding
        for row in range(len(ids)):
            alone = model(input_ids=ids[row : row + 1], attention_mask=mask[row : row + 1]).sentence_embedding
            torch.testing.assert_close(alone[0], batched[row], atol=ATOL, rtol=0)


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_weights_that_do_not_match_are_an_error_naming_them(tiny_converted_dir, tmp_path, damage):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_converted_dir, folder)
    weights = load_file(folder / "model.safetensors")
    if damage == "missing":
        del weights["dense.0.weight"], weights["dense.1.weight"]
    else:
        weights["dense.2.weight"] = torch.zeros(4, 4)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{damage} \(\d\): \[.*'dense\.\d\.weight'"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)


def folder_without(tiny_converted_dir, tmp_path, prefix, keep_st_files=True):
    import shutil

    folder = tmp_path / "partial"
    shutil.copytree(tiny_converted_dir, folder)
    weights = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith(prefix)}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    if not keep_st_files:
        (folder / "modules.json").unlink()
    return folder


def test_missing_weights_are_loaded_only_when_asked_and_named_in_a_warning(tiny_converted_dir, tmp_path):
    """transformers' loading contract: output_loading_info=True (and an explicit state_dict=) load a partial checkpoint,
    initialise what is missing by _init_weights and say so by name; without them, the same folder is refused."""
    folder = folder_without(tiny_converted_dir, tmp_path, "dense.1.")
    with pytest.raises(ValueError, match=r"missing \(1\): \['dense\.1\.weight'\].*output_loading_info=True"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    with pytest.warns(UserWarning, match=r"\['dense\.1\.weight'\] are freshly initialised, not trained"):
        model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["dense.1.weight"] and model.initialized_weights == ["dense.1.weight"]
    complete = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    assert complete.initialized_weights == []
    torch.testing.assert_close(model.dense[0].weight, complete.dense[0].weight, atol=0, rtol=0)  # the rest loaded
    state = {k: v for k, v in complete.state_dict().items() if not k.startswith("model.layers.0.")}
    with pytest.warns(UserWarning, match=r"model\.layers\.0\..*freshly initialised"):
        type(complete).from_pretrained(None, config=complete.config, state_dict=state)


def test_a_backbone_only_checkpoint_loads_with_a_new_head_and_a_warning(tiny_converted_dir, tmp_path):
    """The encoder alone (EmbeddingGemmaTextModel.save_pretrained) loads into the full model to train a new head: the
    encoder's weights exactly, the head initialised and named in a warning."""
    encoder = modeling_embeddinggemma.EmbeddingGemmaTextModel.from_pretrained(tiny_converted_dir)
    encoder.save_pretrained(tmp_path / "backbone")
    with pytest.warns(UserWarning, match=r"backbone-only checkpoint: the head is new.*'dense\.0\.weight'"):
        model = modeling_embeddinggemma.EmbeddingGemmaModel.from_pretrained(tmp_path / "backbone")
    assert model.initialized_weights == ["dense.0.weight", "dense.1.weight"]
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["encoder weight missing", "trained folder without its head"])
def test_partial_checkpoints_that_are_not_backbones_are_refused(tiny_converted_dir, tmp_path, case):
    """Missing encoder weights are never a backbone; a folder that says it is a trained EmbeddingGemma (modules.json,
    or a config naming EmbeddingGemmaModel) and lacks its head is damaged, not a backbone."""
    prefix = "model.layers.1.mlp." if case == "encoder weight missing" else "dense."
    folder = folder_without(tiny_converted_dir, tmp_path, prefix)
    with pytest.raises(ValueError, match=r"do not match EmbeddingGemmaModel: missing \(\d\)"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)


def test_auto_tokenizer_loads_the_folder_without_our_code(tiny_converted_dir):
    """In a fresh process with no way to answer a prompt: no trust_remote_code prompt, no warning, Gemma's tokenizer."""
    code = (
        "from transformers import AutoTokenizer\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(tiny_converted_dir)!r})\n"
        "print(type(tokenizer).__name__, tokenizer('a dog')['input_ids'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tiny_converted_dir.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("GemmaTokenizer"), result.stdout
    assert "custom code" not in result.stderr and "model of type" not in result.stderr, result.stderr
    config = json.loads((tiny_converted_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["auto_map"]["AutoModel"].endswith("EmbeddingGemmaModel")


def test_remote_code_files_are_the_repository_modules(tiny_converted_dir):
    for name in [
        "modeling_embeddinggemma.py",
        "packed_embeddinggemma.py",
        "encoding_embeddinggemma.py",
        "quantization_embeddinggemma.py",
        "calibration_embeddinggemma.py",
        "precision_embeddinggemma.py",
        "configuration_embeddinggemma.py",
        "pipeline_embeddinggemma.py",
    ]:
        assert (tiny_converted_dir / name).read_text() == (REPO / name).read_text(), name


def test_the_encoder_alone_loads_from_a_full_folder(tiny_converted_dir, loaded):
    from modeling_embeddinggemma import EmbeddingGemmaTextModel

    encoder = EmbeddingGemmaTextModel.from_pretrained(tiny_converted_dir)
    ids, mask = make_batch()
    with torch.no_grad():
        expected = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, expected)
