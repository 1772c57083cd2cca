"""Checks that an indexed dataset fits the run, at data set-up (before any step).

* :func:`check_bin_size`: the ``.bin`` holds exactly the bytes the ``.idx`` describes; a size
  that fits another token width is named as a dtype mismatch (a ``uint8`` index over ``uint16``
  tokens would otherwise train on byte-split garbage).
* :func:`check_token_ids`: the largest token id is below the tokenizer's vocabulary (another
  tokenizer's data gives an ``IndexError`` in the embedding, or silently wrong tokens). Exact
  max for datasets up to :data:`FULL_SCAN_TOKENS` tokens, else the max over evenly spaced
  windows of that many tokens in all (a cheap bound: one sequential read of a sample).
* :func:`check_long_enough`: at least one sample (``seq_length + 1`` tokens), else Megatron
  repeats the few tokens there are.

:mod:`megatron_ponder.data.datasets` runs them over a run's data paths (``check_data_fits_run``);
this module imports nothing of it, so the dependency points one way.
"""

from __future__ import annotations

import os

import numpy as np

from megatron_ponder.data.errors import DataError

FULL_SCAN_TOKENS = 1 << 26  # 64 Mi tokens: ~0.1 s to scan; larger datasets are sampled
WINDOWS = 64


def check_bin_size(bin_path: str, actual: int, expected: int, tokens: int, dtype) -> None:
    """DataError unless ``actual`` (the .bin size) is ``expected`` (the index's end)."""
    if actual == expected:
        return
    itemsize = np.dtype(dtype).itemsize
    if actual < expected:
        raise DataError(f"{bin_path} is truncated ({actual} bytes, the index needs {expected}): "
                        "rebuild it with tools/preprocess_data.py")
    if tokens and actual % tokens == 0 and actual // tokens in (1, 2, 4, 8) and actual // tokens != itemsize:
        raise DataError(f"{bin_path} has {actual // tokens}-byte tokens but its index says {np.dtype(dtype).name} "
                        f"({itemsize} byte(s)): the .idx and .bin come from different runs; rebuild both with "
                        "tools/preprocess_data.py")
    raise DataError(f"{bin_path} is {actual} bytes but its index describes {expected}: the .idx and .bin do not "
                    "belong together; rebuild both with tools/preprocess_data.py")


def max_token_id(prefix: str, dtype) -> int:
    """The largest token id in ``prefix.bin`` (sampled beyond FULL_SCAN_TOKENS tokens)."""
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    if len(tokens) <= FULL_SCAN_TOKENS:
        return int(tokens.max()) if len(tokens) else 0
    window = FULL_SCAN_TOKENS // WINDOWS
    starts = np.linspace(0, len(tokens) - window, WINDOWS).astype(np.int64)
    return max(int(tokens[start:start + window].max()) for start in starts)


def check_token_ids(prefix: str, dtype, tokenizer_vocab_size: int, model_vocab_size: int) -> None:
    top = max_token_id(prefix, dtype)
    if top >= tokenizer_vocab_size:
        raise DataError(f"dataset {prefix} holds token id {top}, but the tokenizer has {tokenizer_vocab_size} ids "
                        f"(model vocabulary {model_vocab_size}): it was preprocessed with another tokenizer; pass "
                        "that --tokenizer-model or re-run tools/preprocess_data.py")


def check_long_enough(prefix: str, tokens: int, seq_length: int) -> None:
    if tokens < seq_length + 1:
        raise DataError(f"dataset {prefix} has {tokens} tokens, fewer than one sample ({seq_length + 1} for "
                        f"--seq-length {seq_length}): add data or lower --seq-length")


def check_validation_set(valid, eval_iters: int, split: str, valid_data_path) -> None:
    """Evaluation needs validation samples: name the split that gave it none."""
    if eval_iters > 0 and (valid is None or len(valid) == 0):
        source = f"--valid-data-path {' '.join(valid_data_path)}" if valid_data_path else f"--split {split}"
        raise DataError(f"{source} leaves the validation set empty, but --eval-iters is {eval_iters}: give "
                        "validation a share (e.g. --split 969,30,1), pass --valid-data-path, or --eval-iters 0")
