"""--dataloader-type dali: the DALI pipeline yields exactly the default loader's microbatches."""

import sys

import numpy as np
import pytest
import torch

from support.indexed_documents import write_random_documents

from megatron_ponder.data.dali_loader import DaliMicrobatchStream, import_dali, read_window
from megatron_ponder.data.datasets import MicrobatchStream, build_gpt_datasets
from megatron_ponder.data.errors import DataError
from megatron_ponder.data.tokenizer import NullTokenizer

VOCAB, SEQ = 97, 16
KEYS = ("tokens", "labels", "loss_mask", "position_ids")


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali_data")
    paths = [str(root / f"part{i}") for i in range(2)]
    for seed, path in enumerate(paths):
        write_random_documents(path, 50, VOCAB, seed)
    return paths


def _train_set(data_path, samples, cache):
    train, _, _ = build_gpt_datasets(data_path, "1,0,0", SEQ, 1234, NullTokenizer(VOCAB),
                                     (samples, 0, 0), cache_dir=cache)
    return train


def _assert_same_steps(default, dali, steps):
    for step in range(steps):
        expected, actual = default.next_step(), dali.next_step()
        assert len(expected) == len(actual)
        for want, got in zip(expected, actual, strict=True):
            assert got["attention_mask"] is None
            for key in KEYS:
                assert got[key].dtype == want[key].dtype, key
                assert torch.equal(got[key], want[key]), (step, key)
    assert dali.consumed_samples == default.consumed_samples


@pytest.mark.parametrize("blend", ["one", "weighted"])
def test_dali_matches_default_loader_on_two_dp_ranks_over_several_epochs(
        megatron_world_of_one, prefixes, tmp_path, blend):
    data_path = [prefixes[0]] if blend == "one" else ["0.3", prefixes[0], "0.7", prefixes[1]]
    train = _train_set(data_path, 160, str(tmp_path))
    # Samples in one pass over the documents: Megatron's index repeats (reshuffled) epochs.
    epoch = (int(train.datasets[0].dataset.sequence_lengths.sum()) if blend == "weighted"
             else int(train.dataset.sequence_lengths.sum())) // SEQ
    steps = 2 * len(train) // 8 + 3  # and the stream wraps around the whole dataset twice
    assert len(train) >= 2 * epoch and steps * 8 > 5 * epoch
    for rank in range(2):
        default = MicrobatchStream(train, 8, 2, rank, 2)
        dali = DaliMicrobatchStream(train, 8, 2, rank, 2, device_id=None)
        _assert_same_steps(default, dali, steps)


def test_dali_padding_and_loss_mask_match_megatron(megatron_world_of_one, prefixes, tmp_path):
    """Megatron's padding path (loss 0 where the label is the pad id, pad ids -> 0), exercised by
    declaring a frequent token the pad id, and a window checked against the .bin directly."""
    train = _train_set([prefixes[0]], 64, str(tmp_path))
    window = read_window(train, 5)
    assert window.shape == (SEQ + 1,) and window.dtype == np.int64
    assert torch.equal(train[5]["tokens"], torch.from_numpy(window[:-1]))
    train._pad_token_id = VOCAB - 1  # the EOD id: present in most windows
    default = MicrobatchStream(train, 4, 4, 0, 1)
    dali = DaliMicrobatchStream(train, 4, 4, 0, 1, device_id=None)
    masked = 0
    for _ in range(6):
        want, got = default.next_step()[0], dali.next_step()[0]
        masked += int((want["loss_mask"] == 0).sum())
        for key in KEYS:
            assert torch.equal(got[key], want[key]), key
    assert masked > 0


def test_dali_resumes_at_the_same_sample(megatron_world_of_one, prefixes, tmp_path):
    """A stream rebuilt from a checkpoint's consumed_samples continues where the first one was."""
    train = _train_set([prefixes[0]], 96, str(tmp_path))
    first = DaliMicrobatchStream(train, 6, 3, 1, 2, device_id=None, py_workers=2)
    uninterrupted = [first.next_step() for _ in range(6)]
    resumed = DaliMicrobatchStream(train, 6, 3, 1, 2, consumed_samples=18, device_id=None)
    default = MicrobatchStream(train, 6, 3, 1, 2, consumed_samples=18)
    for step in uninterrupted[3:]:
        for got, again, want in zip(step, resumed.next_step(), default.next_step(), strict=True):
            for key in KEYS:
                assert torch.equal(got[key], want[key]) and torch.equal(again[key], want[key]), key
    assert resumed.consumed_samples == first.consumed_samples == 36


def test_missing_dali_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(DataError) as error:
        import_dali()
    assert 'pip install -e ".[dali]"' in str(error.value) and "\n" not in str(error.value)


def test_dali_rejects_configs_it_does_not_build(megatron_world_of_one, prefixes, tmp_path):
    train = _train_set([prefixes[0]], 32, str(tmp_path))
    train.config.eod_mask_loss = True
    try:
        with pytest.raises(DataError, match="--dataloader-type single"):
            DaliMicrobatchStream(train, 4, 2, 0, 1, device_id=None)
    finally:
        train.config.eod_mask_loss = False
    with pytest.raises(DataError, match="--global-batch-size"):
        DaliMicrobatchStream(train, 6, 4, 0, 1, device_id=None)
    with pytest.raises(DataError, match="use --dali-py-workers 0 with CUDA"):
        DaliMicrobatchStream(train, 4, 2, 0, 1, device_id=0, py_workers=2)


def test_dataloader_type_flag_without_dali_is_a_one_line_argument_error(monkeypatch):
    from megatron_ponder.training.arguments import ArgumentError, parse_args, validate_args

    args = parse_args(["--mock-data", "--dataloader-type", "dali"])
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ArgumentError, match=r'pip install -e "\.\[dali\]"'):
        validate_args(args, 1)
    with pytest.raises(ArgumentError, match="--dali-py-workers 2 needs --dataloader-type dali"):
        validate_args(parse_args(["--mock-data", "--dali-py-workers", "2"]), 1)
