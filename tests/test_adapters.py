"""LoRA adapters through PEFT, on the model as `AutoModel` loads it and through `SentenceTransformer.add_adapter`:
training changes the embeddings, the adapter saves and reloads to the same embeddings (on the packed and the
reference path), and merging gives them without PEFT."""

import pytest
import torch
from transformers import AutoModel

from conftest import TEXTS
from helpers import ATOL


peft = pytest.importorskip("peft", reason="PEFT is not installed: pip install -e .[test]")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config():
    # lora_B starts at zero (an adapter that changes nothing) unless initialised otherwise: random here, so that
    # a reloaded adapter that is silently dropped would show
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)


def train_a_few_steps(model, tokenizer, steps=3):
    """Pulls the first two texts' embeddings together: the loss falls and only the adapter's weights change."""
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        embeddings = model(**batch).sentence_embedding
        loss = 1 - embeddings[0] @ embeddings[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_lora_on_automodel_trains_saves_reloads_and_merges(tiny_converted_dir, tmp_path):
    base = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    before = base.encode(TEXTS)
    model = peft.get_peft_model(base, lora_config())
    assert 0 < sum(p.numel() for p in model.parameters() if p.requires_grad) < base.num_parameters() / 4
    losses = train_a_few_steps(model, base.tokenizer)
    assert losses[-1] < losses[0], losses
    trained = model.encode(TEXTS)
    assert abs(trained - before).max() > 1e-3  # the adapter is used on the packed path `encode` takes
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    fresh = AutoModel.from_pretrained(tiny_converted_dir, trust_remote_code=True)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    assert abs(reloaded.encode(TEXTS) - trained).max() <= ATOL
    reloaded.config.use_packed_path = False  # the reference path gives the same embeddings
    assert abs(reloaded.encode(TEXTS) - trained).max() <= ATOL
    reloaded.config.use_packed_path = True
    merged = reloaded.merge_and_unload()
    assert type(merged).__name__ == "EmbeddingGemmaModel"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert abs(merged.encode(TEXTS) - trained).max() <= ATOL


def peft_too_old_for_transformers() -> str | None:
    """transformers' own adapter API (which `SentenceTransformer.add_adapter` calls) has a floor on PEFT."""
    from importlib.metadata import version as installed

    from packaging.version import Version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:
        return None
    if Version(installed("peft")) < Version(MIN_PEFT_VERSION):
        return f"transformers' adapter API needs PEFT >= {MIN_PEFT_VERSION}, installed {installed('peft')}"
    return None


def test_lora_through_sentence_transformers_add_adapter(tiny_converted_dir, tmp_path):
    """add_adapter, save (the adapter and the config beside it), SentenceTransformer(saved folder) reloads it."""
    from sentence_transformers import SentenceTransformer

    if reason := peft_too_old_for_transformers():
        pytest.skip(reason + " (get_peft_model on AutoModel works: the test above)")

    model = SentenceTransformer(str(tiny_converted_dir), device="cpu", trust_remote_code=True)
    before = model.encode_query(TEXTS)
    model.add_adapter(lora_config())
    adapted = model.encode_query(TEXTS)
    assert abs(adapted - before).max() > 1e-3
    model.save_pretrained(str(tmp_path / "st-adapter"))
    reloaded = SentenceTransformer(str(tmp_path / "st-adapter"), device="cpu", trust_remote_code=True)
    assert abs(reloaded.encode_query(TEXTS) - adapted).max() <= ATOL
