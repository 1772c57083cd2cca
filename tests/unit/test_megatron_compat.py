"""megatron_ponder.runtime.megatron_compat: the supported range, and each difference it bridges."""

import inspect
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from support.indexed_documents import write_random_documents
from support.tiny_models import tiny_config, tiny_model

from megatron_ponder.data.datasets import build_gpt_datasets
from megatron_ponder.data.tokenizer import NullTokenizer
from megatron_ponder.runtime import megatron_compat
from megatron_ponder.runtime.megatron_compat import (
    UnsupportedMegatronCoreError,
    check_megatron_core_version,
    gpt_dataset_window,
)


@pytest.mark.parametrize("version", ["0.16.1", "0.17.0", "0.18.2", "0.19.2", "0.19.11", "0.19.3rc1"])
def test_supported_versions_pass(version):
    assert check_megatron_core_version(version)[:2] in {(0, 16), (0, 17), (0, 18), (0, 19)}


@pytest.mark.parametrize("version", ["0.16.0", "0.15.3", "0.20.0", "0.20.0rc0", "1.0.0", "main"])
def test_unsupported_version_is_one_line_naming_the_range(version):
    with pytest.raises(UnsupportedMegatronCoreError) as error:
        check_megatron_core_version(version)
    message = str(error.value)
    assert "\n" not in message
    assert ">=0.16.1,<0.20" in message and f"megatron-core {version} is installed" in message


def test_installed_version_is_supported():
    check_megatron_core_version()


@pytest.mark.parametrize("version", ["0.15.3", "0.20.0"])
def test_import_fails_with_the_one_line_error(version):
    """`import megatron_ponder` under a monkeypatched megatron-core version."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        f"m.version = lambda name: {version!r} if name == 'megatron-core' else real(name)\n"
        "import megatron_ponder\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "megatron_ponder.runtime.megatron_compat.UnsupportedMegatronCoreError: megatron_ponder "
        f"supports megatron-core >=0.16.1,<0.20; megatron-core {version} is installed: "
        "pip install 'megatron-core>=0.16.1,<0.20'"
    )


def test_dataset_window_is_what_getitem_splits(megatron_world_of_one, tmp_path):
    """The private window read (its return changed in 0.19) pinned to the public __getitem__:
    tokens / labels are the window shifted, pad ids -> 0, loss 0 where the label is padding."""
    vocab, seq = 97, 16
    prefix = write_random_documents(str(tmp_path / "docs"), 30, vocab, seed=3)
    dataset, _, _ = build_gpt_datasets([prefix], "1,0,0", seq, 1234, NullTokenizer(vocab), (40, 0, 0),
                                       cache_dir=str(tmp_path))  # one data path: a GPTDataset
    dataset._pad_token_id = vocab - 1  # the EOD id: frequent, so the padding path runs
    padded = 0
    for index in range(len(dataset)):
        window = gpt_dataset_window(dataset, index)
        assert window.shape == (seq + 1,) and window.dtype == np.int64
        item = dataset[index]
        is_pad = torch.from_numpy(window == vocab - 1)
        padded += int(is_pad.sum())
        expected = torch.from_numpy(window).masked_fill(is_pad, 0)
        assert torch.equal(item["tokens"], expected[:-1])
        assert torch.equal(item["labels"], expected[1:])
        # Only one way: Megatron caches the first sample's mask after zeroing its pad positions in
        # place, so mid-window pad ids (which real padding never gives) leave zeros elsewhere too.
        assert bool((item["loss_mask"][is_pad[1:]] == 0).all())
    assert padded > 0


def test_ponder_config_builds_without_the_full_scope_warning(megatron_world_of_one):
    """The cause (Megatron's deprecated default "full") is replaced by the value it means."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = tiny_config("llama", ponder_mode="latent")
    assert not [w for w in caught if "full scope" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stock = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4)
    field = megatron_compat._cuda_graph_layer_field(TransformerConfig)
    assert [w for w in caught if "full scope" in str(w.message)]  # else the fix is not needed
    assert getattr(config, field) == getattr(stock, field) == []  # same meaning after Megatron's parse


def test_gpt_model_deprecation_is_logged_at_most_once(megatron_world_of_one, monkeypatch, caplog):
    from megatron.core.models.gpt import GPTModel

    logger = logging.getLogger("megatron.core.models.gpt.gpt_model")
    monkeypatch.setattr(logger, "filters", [])  # as in a fresh process
    megatron_compat.gpt_model_deprecation_once()
    megatron_compat.gpt_model_deprecation_once()  # idempotent
    caplog.set_level(logging.WARNING, logger=logger.name)
    for seed in range(3):
        tiny_model("llama", seed=seed, ponder_mode="none")
    notices = [r for r in caplog.records if "GPTModel IS DEPRECATED" in r.getMessage()]
    logs_it = "GPTModel IS DEPRECATED" in inspect.getsource(GPTModel.__init__)  # 0.19+
    assert len(notices) == (1 if logs_it else 0)


def test_multi_pass_forward_refuses_newer_gpt_arguments(megatron_world_of_one):
    """0.18's output_processor hook reaches GPTModel.forward in mode none only."""
    model = tiny_model("llama", ponder_mode="ponder", ponder_steps=2)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="output_processor"):
        model(tokens, torch.arange(4)[None], None, output_processor=lambda *args, **kwargs: None)


def test_import_without_megatron_core_names_the_install():
    """No megatron-core at all (no metadata, no module): one ImportError line, not a chained traceback."""
    code = (
        "import importlib.metadata as m, sys\n"
        "def missing(name, real=m.version):\n"
        "    if name == 'megatron-core':\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.version = missing\n"
        "sys.modules['megatron'] = None\n"  # `import megatron.core` now raises ImportError
        "import megatron_ponder\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "During handling" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "megatron_ponder.runtime.megatron_compat.UnsupportedMegatronCoreError: megatron_ponder needs "
        "megatron-core >=0.16.1,<0.20, which is not installed: pip install 'megatron-core>=0.16.1,<0.20'"
    )
