"""Untrusted folders (issue 24): a folder from the Hub is input like any other. Its config is checked against its own
tensors before anything big is built, sizes must be positive, a safetensors header cannot claim more than the file
holds, and NaN or infinite weights are refused by name. Each case ends in a clear error within seconds."""

import json
import shutil
import struct
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_embeddinggemma import EmbeddingGemmaModel, EmbeddingGemmaTextModel


def copy_with_config(folder, tmp_path, **changes):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def layers_of(folder) -> int:
    return json.loads((folder / "config.json").read_text())["num_hidden_layers"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_hidden_layers": 1_000_000, "layer_types": None}, "num_hidden_layers=1000000 in the config is beyond"),
        ({"vocab_size": -5}, "vocab_size=-5 in the config: expected a positive int"),
        ({"intermediate_size": -1}, "intermediate_size=-1 in the config: expected a positive int"),
        ({"max_position_embeddings": 0}, "max_position_embeddings=0 in the config: expected a positive int"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"num_hidden_layers": "3"}, "num_hidden_layers='3'"),
        ({"vocab_size": 5_000_000}, "vocab_size=5000000 but the checkpoint has 384 rows of embed_tokens.weight"),
        ({"intermediate_size": 100_000}, "intermediate_size=100000 but the checkpoint has"),
    ],
)
def test_a_config_that_does_not_fit_is_refused_in_seconds(tiny_converted_dir, tmp_path, changes, message):
    folder = copy_with_config(tiny_converted_dir, tmp_path, **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        EmbeddingGemmaModel.from_pretrained(folder)
    assert time.perf_counter() - start < 10


def test_more_layers_than_the_checkpoint_has_is_refused_before_building(tiny_converted_dir, tmp_path, monkeypatch):
    layers = layers_of(tiny_converted_dir) + 500  # within the sanity bound: only the checkpoint can tell
    folder = copy_with_config(tiny_converted_dir, tmp_path, num_hidden_layers=layers, layer_types=None)
    built = []
    monkeypatch.setattr(EmbeddingGemmaModel, "__init__", lambda *a, **k: built.append(1) or 1 / 0)
    with pytest.raises(ValueError, match=f"num_hidden_layers={layers} but the checkpoint has"):
        EmbeddingGemmaModel.from_pretrained(folder)
    assert not built  # refused before any model was built
    with pytest.raises(ValueError, match="does not describe its checkpoint"):
        EmbeddingGemmaTextModel.from_pretrained(folder)


def rewrite_header(path, change):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def test_a_safetensors_header_claiming_more_than_the_file_is_refused(tiny_converted_dir, tmp_path):
    folder = copy_with_config(tiny_converted_dir, tmp_path)
    weights = folder / "model.safetensors"

    def huge(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"], header[name]["data_offsets"] = [10**8, 10**4], [0, 4 * 10**12]

    rewrite_header(weights, huge)
    with pytest.raises(ValueError, match="claims bytes 0-4,000,000,000,000 but the file holds"):
        EmbeddingGemmaModel.from_pretrained(folder)
    # a header length beyond the file itself (the memory-exhaustion shape): refused before reading it
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(ValueError, match="its header claims 1,099,511,627,776 bytes but the file has"):
        EmbeddingGemmaModel.from_pretrained(folder)
    weights.write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="fewer than the 8 of a header length"):
        EmbeddingGemmaModel.from_pretrained(folder)


def test_shards_outside_the_folder_are_refused(tiny_converted_dir, tmp_path):
    folder = copy_with_config(tiny_converted_dir, tmp_path)
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    names = {name: "../elsewhere.safetensors" for name in load_file(tmp_path / "elsewhere.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    with pytest.raises(ValueError, match="names shards outside its folder"):
        EmbeddingGemmaModel.from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_weights_are_refused_by_name(tiny_converted_dir, tmp_path, value):
    folder = copy_with_config(tiny_converted_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.0.mlp.up_proj.weight"))
    weights[name][0, 0] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 tensors \(\['model.layers.0.mlp.up_proj"):
        EmbeddingGemmaModel.from_pretrained(folder)


def test_a_sound_folder_still_loads_and_embeds(tiny_converted_dir):
    model = EmbeddingGemmaModel.from_pretrained(tiny_converted_dir)
    with torch.no_grad():
        embedding = model(input_ids=torch.tensor([[2, 10, 11, 1]])).sentence_embedding
    assert torch.isfinite(embedding).all()


@pytest.mark.parametrize("fast, attn", [(True, "sdpa"), (False, "sdpa"), (False, "eager"), (False, "flex_attention")])
def test_an_all_padding_row_is_an_error_on_every_path(fast, attn):
    from helpers import make_batch, tiny_model

    model = tiny_model(attn=attn)
    model.config.use_packed_path = fast
    input_ids, attention_mask = make_batch(seed=9)
    attention_mask[1] = 0
    with pytest.raises(ValueError, match=r"attention_mask rows \[1\] have no real token"), torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    with pytest.raises(ValueError, match="no real token"), torch.no_grad():
        model.to(torch.bfloat16)(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("mode", ["float32", "bfloat16", "int8"])
def test_one_text_alone_and_in_a_batch_agree_on_every_path(mode):
    """Padding never changes a text's embedding: float32 to rounding (1e-5) on the packed path and the reference
    path with sdpa, eager and flex attention; bfloat16 to its rounding (products see other shapes: 2e-2); int8 to
    rounding too (activation scales are per token, so the batch never sets them: 1e-4)."""
    from helpers import make_batch, tiny_model
    from quantization_embeddinggemma import quantize_int8

    input_ids, attention_mask = make_batch(seed=10)
    tolerance = {"float32": 1e-5, "bfloat16": 2e-2, "int8": 1e-4}[mode]
    for fast, attn in [(True, "sdpa"), (False, "sdpa"), (False, "eager"), (False, "flex_attention")]:
        model = tiny_model(attn=attn)
        model.config.use_packed_path = fast
        if mode == "bfloat16":
            model.to(torch.bfloat16)
        elif mode == "int8":
            quantize_int8(model, rotation=0, rounding="nearest")
        with torch.no_grad():
            batch = model(input_ids=input_ids, attention_mask=attention_mask).sentence_embedding
            for row in range(len(input_ids)):
                length = int(attention_mask[row].sum())
                alone = model(input_ids=input_ids[row : row + 1, :length]).sentence_embedding
                torch.testing.assert_close(alone[0], batch[row], atol=tolerance, rtol=0)


@pytest.mark.parametrize("path", ["../elsewhere", "/etc", "2_Dense/../../x"])
def test_a_modules_json_pointing_outside_the_folder_is_refused(tiny_st_dir, tmp_path, path):
    from convert_checkpoint import ConversionError, convert

    source = tmp_path / "source"
    shutil.copytree(tiny_st_dir, source)
    modules = json.loads((source / "modules.json").read_text())
    modules[-2]["path"] = path
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConversionError, match="outside the folder"):
        convert(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlinked_output_is_refused_and_its_target_untouched(tiny_st_dir, tmp_path):
    from convert_checkpoint import ConversionError, convert

    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(ConversionError, match="is a symbolic link"):
        convert(str(tiny_st_dir), link, overwrite=True)
    assert (target / "keep.txt").read_text() == "mine" and link.is_symlink()


def test_tokenizer_files_named_outside_the_folder_are_not_read(tiny_converted_dir, tmp_path):
    """tokenizer_config.json naming tokenizer/vocab files elsewhere: the folder's own tokenizer.json is used (the
    named files, here unreadable as tokenizers, are never opened), so `encode` gives the original embeddings."""
    folder = copy_with_config(tiny_converted_dir, tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text('{"not": "a tokenizer"}')
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_file=str(outside), vocab_file=str(outside), chat_template_file=str(outside))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    expected = EmbeddingGemmaModel.from_pretrained(tiny_converted_dir).encode(["a dog runs"])
    actual = EmbeddingGemmaModel.from_pretrained(folder).encode(["a dog runs"])
    assert (actual == expected).all()


def test_a_hub_repo_is_checked_before_building_too(tiny_converted_dir, tmp_path, monkeypatch):
    """A Hub id: its config and safetensors come from the Hub cache (as from_pretrained fetches them anyway) and are
    checked before the model is built. Here the cache is laid out by hand and read with local_files_only."""
    snapshot = tmp_path / "hub" / "models--someone--bad-embeddinggemma" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_converted_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    config = json.loads((snapshot / "config.json").read_text())
    config.update(num_hidden_layers=layers_of(tiny_converted_dir) + 500, layer_types=None)
    (snapshot / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(EmbeddingGemmaModel, "__init__", lambda *a, **k: built.append(1) or 1 / 0)
    with pytest.raises(ValueError, match="does not describe its checkpoint"):
        EmbeddingGemmaModel.from_pretrained(
            "someone/bad-embeddinggemma", cache_dir=str(tmp_path / "hub"), local_files_only=True
        )
    assert not built
