"""transformers' own common model tests (`ModelTesterMixin` from the source release of the installed transformers,
fetched by `scripts/fetch_transformers_tests.py`, which setup.sh runs) on `EmbeddingGemmaModel` and
`EmbeddingGemmaTextModel`: the loading contract (missing weights, backbone-only checkpoints, `_init_weights`),
save/load, attention switching, batching, outputs. What does not apply is skipped below with the reason.

The mixin imports two sibling mixins the source release does not ship (export and generation tests); they are
stubbed empty: export is tested in test_transformers_checks.py, and an encoder does not generate."""

import copy
import importlib
import re
import sys
import tempfile
import types
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from conftest import REPO
from modeling_embeddinggemma import FLOAT16_ERROR, EmbeddingGemmaModel, EmbeddingGemmaTextModel
from testing_embeddinggemma import tiny_config


SOURCE = REPO / ".cache" / "transformers-tests" / transformers.__version__ / "tests"
PACKAGE = "transformers_release_tests"  # not `tests`, which is ours


def load_model_tester_mixin():
    if not (SOURCE / "test_modeling_common.py").is_file():
        return None
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(SOURCE)]
        sys.modules[PACKAGE] = package
        stubs = {"exporters.test_export": "ExportTesterMixin", "generation.test_utils": "GenerationTesterMixin"}
        for dotted, name in stubs.items():
            parent, child = dotted.split(".")
            for module_name in (f"{PACKAGE}.{parent}", f"{PACKAGE}.{dotted}"):
                module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
                module.__path__ = []
            setattr(sys.modules[f"{PACKAGE}.{dotted}"], name, type(name, (), {}))
    try:
        return importlib.import_module(f"{PACKAGE}.test_modeling_common")
    except ImportError as error:  # a test dependency of transformers' (parameterized) is not installed
        pytest.skip(f"transformers' common tests need {error.name}: pip install -e .[test]", allow_module_level=True)


common = load_model_tester_mixin()
if common is None:
    pytest.skip(
        f"transformers {transformers.__version__}'s common tests are not here ({SOURCE}): run "
        "python scripts/fetch_transformers_tests.py (setup.sh does)",
        allow_module_level=True,
    )

FLOAT16 = "EmbeddingGemma refuses float16 by design (its activations overflow: NaN embeddings); tested in test_modeling"


class EmbeddingGemmaModelTester:
    """What ModelTesterMixin asks of a model tester: a tiny config (one sliding and one full layer) and inputs."""

    batch_size = 3
    seq_length = 7
    is_training = False
    hidden_size = 64
    num_hidden_layers = 2
    num_attention_heads = 2
    vocab_size = 384

    def __init__(self, parent):
        self.parent = parent

    def get_config(self):
        return tiny_config(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])

    def prepare_config_and_inputs_for_common(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 5:] = 0  # one padded row
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class EmbeddingGemmaCommonTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (EmbeddingGemmaModel, EmbeddingGemmaTextModel)
    test_resize_embeddings = False  # the embedding table is the encoder's; resizing is the tokenizer's business
    is_encoder_decoder = False
    test_pruning = test_head_masking = False  # transformers 4.x's head pruning and head_mask (gone in 5.x): not ours

    def setUp(self):
        self.model_tester = EmbeddingGemmaModelTester(self)

    def test_bc_torch_dtype(self):
        """transformers' test, less float16 (refused, with the alternatives, under both names)."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with tempfile.TemporaryDirectory() as folder:
                model_class(copy.deepcopy(config)).save_pretrained(folder)
                for dtype in ["bfloat16", "float32", "auto", torch.bfloat16, torch.float32]:
                    by_old = model_class.from_pretrained(folder, torch_dtype=dtype)
                    by_new = model_class.from_pretrained(folder, dtype=dtype)
                    for (k1, v1), (k2, v2) in zip(by_old.named_parameters(), by_new.named_parameters()):
                        self.assertEqual((k1, v1.dtype), (k2, v2.dtype))
                        torch.testing.assert_close(v1, v2)
                for key in ("torch_dtype", "dtype"):
                    for dtype in ("float16", torch.float16):
                        with self.assertRaisesRegex(ValueError, re.escape(FLOAT16_ERROR)):
                            model_class.from_pretrained(folder, **{key: dtype})


for _name in dir(common.ModelTesterMixin):
    if _name.startswith("test_") and "fp16" in _name:
        setattr(EmbeddingGemmaCommonTest, _name, unittest.skip(FLOAT16)(lambda self: None))


def test_the_common_tests_ran():
    """The mixin is the one of the installed transformers and has the loading-contract tests this suite relies on."""
    assert Path(common.__file__).resolve().is_relative_to(SOURCE.resolve())
    for name in ("test_can_init_all_missing_weights", "test_correct_missing_keys", "test_save_load"):
        assert hasattr(EmbeddingGemmaCommonTest, name), name
