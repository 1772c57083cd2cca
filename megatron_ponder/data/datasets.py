"""Megatron GPT datasets for the training entry point: data paths, checks, building.

* :func:`parse_data_path` turns Megatron-LM style ``--data-path`` words into a ``blend``.
* :func:`check_indexed_dataset` / :func:`check_vocab_fits` fail early with a one-line fix
  instead of an assert or an out-of-range embedding lookup deep inside training.
* :func:`build_gpt_datasets` builds (train, valid, test) with Megatron-Core's own
  ``BlendedMegatronDatasetBuilder`` + ``GPTDataset`` (or ``MockGPTDataset``).
* :class:`MicrobatchStream` cuts a dataset into this rank's microbatches, deterministically
  and resumably (order: :func:`rank_step_indices`; the DALI loader reads the same order).

``build_gpt_datasets`` is collective under ``torch.distributed``: every rank must call it.
Megatron builds each index cache on rank 0, barriers, then the other ranks load the cache.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from megatron_ponder.data.checks import check_bin_size, check_long_enough, check_token_ids
from megatron_ponder.data.errors import DataError

# (prefixes, weights or None): the type of GPTDatasetConfig.blend.
Blend = Tuple[List[str], Optional[List[float]]]

_SPLIT_NAMES = ("train", "valid", "test")


def parse_data_path(data_path: Optional[Sequence[str]]) -> Optional[Blend]:
    """Megatron-LM ``--data-path`` words -> ``(prefixes, weights)`` for GPTDatasetConfig.

    ``["p"]`` -> ``(["p"], None)``; ``["p1", "p2"]`` -> ``(["p1", "p2"], None)``;
    ``["0.3", "p1", "0.7", "p2"]`` -> ``(["p1", "p2"], [0.3, 0.7])``.
    Weights None means Megatron's convention: a blend in proportion to the datasets' sizes
    (every sample equally likely), not equal shares. A single string is split on whitespace.
    """
    from megatron.core.datasets.utils import get_blend_from_list

    if data_path is None:
        return None
    words = data_path.split() if isinstance(data_path, str) else [str(w) for w in data_path]
    words = [w for w in words if w.strip()]
    if not words:
        raise DataError("--data-path is empty: pass one or more dataset prefixes")
    prefixes, weights = get_blend_from_list(words)
    if weights is None and any(_is_number(p) for p in prefixes):
        # get_blend_from_list silently reads a half-weighted list as all prefixes.
        raise DataError(
            f"--data-path {' '.join(words)} mixes weights and prefixes: give either only "
            "prefixes or a weight before every prefix"
        )
    if weights is not None:
        if any(_is_number(p) for p in prefixes):
            raise DataError(
                f"--data-path {' '.join(words)}: expected WEIGHT PREFIX pairs, found two "
                "numbers in a row"
            )
        if any(not w > 0 or not math.isfinite(w) for w in weights):
            raise DataError(f"--data-path weights {weights} must be positive numbers")
    return list(prefixes), None if weights is None else [float(w) for w in weights]


class IndexedDatasetInfo(NamedTuple):
    """Counts from an index: sequences = documents for tools/preprocess_data.py output."""

    documents: int
    sequences: int
    tokens: int


def check_indexed_dataset(prefix: str) -> IndexedDatasetInfo:
    """Check ``prefix.bin``/``prefix.idx`` are present, readable and complete.

    Raises DataError when a file is missing, the index is unreadable, the dataset is empty or
    the .bin size is not the one the index says (truncated, or another token width).
    """
    # The private index reader, not IndexedDataset: only the .idx is needed, and a failing
    # IndexedDataset constructor leaves an object whose __del__ raises again.
    from megatron.core.datasets.indexed_dataset import DType, _IndexReader

    prefix = str(prefix)
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    missing = [p for p in (bin_path, idx_path) if not os.path.isfile(p)]
    if missing:
        hint = ""
        for suffix in (".bin", ".idx"):
            if prefix.endswith(suffix):
                hint = f" (pass the prefix without {suffix}: {prefix[: -len(suffix)]})"
        raise DataError(
            f"dataset {missing[0]} not found{hint}: run tools/preprocess_data.py "
            f"--output-prefix {prefix} to create it"
        )
    try:
        index = _IndexReader(idx_path, multimodal=False)
        lengths, pointers = index.sequence_lengths, index.sequence_pointers
        documents = len(index.document_indices) - 1
        itemsize = DType.size(index.dtype)
        consistent = documents >= 0 and int(index.document_indices[-1]) == len(lengths)
    except Exception as err:  # Megatron asserts / numpy errors on a damaged index
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"index {idx_path} is unreadable ({reason}): rebuild it with tools/preprocess_data.py"
        ) from None
    if not consistent:
        raise DataError(
            f"index {idx_path} is unreadable (document and sequence counts disagree): "
            "rebuild it with tools/preprocess_data.py"
        )
    if len(lengths) == 0:
        raise DataError(f"dataset {prefix} has no documents: rebuild it from non-empty input")
    expected = int(pointers[-1]) + int(lengths[-1]) * itemsize
    check_bin_size(bin_path, os.path.getsize(bin_path), expected, int(lengths.sum(dtype="int64")), index.dtype)
    return IndexedDatasetInfo(documents, len(lengths), int(lengths.sum(dtype="int64")))


def check_vocab_fits(tokenizer_vocab_size: int, model_vocab_size: int) -> None:
    """DataError if token ids could exceed the model's embedding table."""
    if tokenizer_vocab_size > model_vocab_size:
        raise DataError(
            f"tokenizer vocabulary {tokenizer_vocab_size} larger than the model's "
            f"{model_vocab_size}: raise --vocab-size to at least {tokenizer_vocab_size} or use "
            "a smaller tokenizer"
        )


class _FileBlends(NamedTuple):
    """What GPTDatasetConfig needs to read indexed files: one blend split by ``split``, or one
    blend per split (then ``split`` is None)."""

    blend: Optional[Blend]
    blend_per_split: Optional[List[Optional[Blend]]]
    split: Optional[str]
    prefixes: List[str]


def build_gpt_datasets(
    data_path: Optional[List[str]],
    split: str,
    seq_length: int,
    seed: int,
    tokenizer,
    num_samples: Tuple[Optional[int], Optional[int], Optional[int]],
    mock: bool = False,
    valid_data_path: Optional[List[str]] = None,
    cache_dir: Optional[str] = None,
    *,
    model_vocab_size: Optional[int] = None,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
):
    """(train, valid, test) GPT datasets; a split not built is None.

    Each dataset item is a dict of ``tokens``/``labels`` ``[seq_length]`` int64 (labels =
    tokens shifted by one), ``loss_mask`` ``[seq_length]`` float and ``position_ids``
    ``[seq_length]`` int64; no attention mask (the model builds the causal mask) unless
    ``reset_attention_mask``.

    The three document flags have Megatron-LM's meaning and are applied by Megatron's own
    ``_get_ltor_masks_and_position_ids`` inside ``GPTDataset``: ``reset_position_ids``: positions
    restart after every end-of-document token; ``reset_attention_mask``: each item also holds an
    ``attention_mask`` [1, L, L] bool (True = masked) in which no token sees an earlier document;
    ``eod_mask_loss``: ``loss_mask`` is 0 at end-of-document tokens.

    ``num_samples`` (train, valid, test): samples to draw; Megatron repeats epochs (each one
    reshuffled) to reach it; a part of ``split`` asked for 0 samples is not built (None).
    ``split`` (e.g. ``"969,30,1"``) divides ``data_path``'s documents; with ``valid_data_path``
    the train data is all of ``data_path``, validation comes from ``valid_data_path`` and there
    is no test set. ``mock`` uses MockGPTDataset (no files).
    Index caches go under ``cache_dir`` (default: next to the first dataset), in a
    sub-directory named by a hash of the .idx files, so a rebuilt dataset never reuses stale
    sample indices (Megatron's own cache key holds only the path). ``is_built_on_rank``
    defaults to every rank: each data-parallel rank reads its own samples.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    sizes = _checked_request(tokenizer, seq_length, num_samples, model_vocab_size)
    if mock:
        # Megatron sets an even "1,1,1" split for mock data.
        cls, files, path_to_cache = MockGPTDataset, _FileBlends(None, None, None, []), None
    else:
        cls, files = GPTDataset, _file_blends(data_path, valid_data_path, split, sizes)
        if files.blend_per_split is not None:
            sizes[2] = None  # a separate validation blend leaves no test set
        path_to_cache = _cache_path(files.prefixes, cache_dir)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=files.blend,
        blend_per_split=files.blend_per_split,
        split=files.split,
        tokenizer=tokenizer,
        path_to_cache=path_to_cache,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        # Megatron builds the document mask only when asked to create one.
        create_attention_mask=reset_attention_mask,
    )
    if config.split_matrix is not None:
        # A part asked for no samples (the test part, validation at --eval-iters 0) is not built:
        # Megatron would count epochs of it until it holds one token, forever when the part has
        # no document (969,30,1 leaves the test part empty below 500 documents).
        config.split_matrix = [None if size == 0 else bounds
                               for bounds, size in zip(config.split_matrix, sizes, strict=True)]
    builder = BlendedMegatronDatasetBuilder(
        cls, sizes, is_built_on_rank or (lambda: True), config
    )
    train, valid, test = builder.build()
    return train, valid, test


def _checked_request(tokenizer, seq_length: int, num_samples, model_vocab_size: Optional[int]) -> List[Optional[int]]:
    """DataError for a request no dataset can serve; returns the sample counts as a list."""
    if model_vocab_size is not None:
        check_vocab_fits(tokenizer.vocab_size, model_vocab_size)
    if seq_length < 1:
        raise DataError(f"--seq-length must be positive, got {seq_length}")
    sizes = list(num_samples)
    if len(sizes) != 3 or any(s is not None and s < 0 for s in sizes):
        raise DataError(f"num_samples must be three counts (train, valid, test), got {sizes}")
    return sizes


def _file_blends(data_path, valid_data_path, split: str, sizes: List[Optional[int]]) -> _FileBlends:
    """The blends of ``--data-path`` (and ``--valid-data-path``), every file checked, and the
    split checked to give each requested part documents."""
    if not data_path:
        raise DataError("no training data: pass --data-path PREFIX (or --mock-data)")
    train_blend = parse_data_path(data_path)
    if valid_data_path:
        blend, blend_per_split, split = None, [train_blend, parse_data_path(valid_data_path), None], None
        blends = blend_per_split[:2]
    else:
        blend, blend_per_split, blends = train_blend, None, [train_blend]
        if len(blend[0]) == 1:
            blend = (blend[0], None)  # one prefix: a weight only forces a needless blend layer
    if any(len(b[0]) > 1 for b in blends) and not torch.distributed.is_initialized():
        raise DataError(
            "blending several datasets needs torch.distributed initialised (Megatron's "
            "BlendedDataset asks for the rank): call initialize_parallel() first"
        )
    prefixes = [p for b in blends for p in b[0]]
    infos = {prefix: check_indexed_dataset(prefix) for prefix in prefixes}
    if blend is not None:
        _check_split(split, {p: infos[p].sequences for p in blend[0]}, sizes)
    return _FileBlends(blend, blend_per_split, split, prefixes)


def _cache_path(prefixes: List[str], cache_dir: Optional[str]) -> str:
    """Megatron's index-cache folder for these files: under ``cache_dir`` (default: next to the
    first dataset), named by the files' fingerprint."""
    root = cache_dir or os.path.join(os.path.dirname(os.path.abspath(prefixes[0])), "megatron_index_cache")
    return os.path.join(root, _fingerprint(prefixes))


def _check_split(split: str, sequences: Dict[str, int], sizes: List[Optional[int]]) -> None:
    """DataError for a malformed split, or a split part that gets no documents.

    Megatron would otherwise assert, or loop forever counting epochs of an empty split.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
    )
    parts = re.findall(r"[.0-9]+", split or "")
    if (
        not parts
        or len(parts) > 3
        or not re.fullmatch(r"\s*[.0-9]+(\s*[,/]\s*[.0-9]+)*\s*", split)
    ):
        raise DataError(f"--split {split!r} is malformed: use e.g. 969,30,1 (train,valid,test)")
    vector = [float(p) for p in parts] + [0.0] * (3 - len(parts))
    if sum(vector) <= 0:
        raise DataError(f"--split {split!r} has no positive part: use e.g. 969,30,1")
    matrix = convert_split_vector_to_split_matrix([v / sum(vector) for v in vector])
    for prefix, count in sequences.items():
        for name, bounds, size in zip(_SPLIT_NAMES, matrix, sizes, strict=True):
            if bounds is None or not size:
                continue
            # The same rounding as BlendedMegatronDatasetBuilder._build_megatron_dataset_splits.
            begin, end = int(round(bounds[0] * count)), int(round(bounds[1] * count))
            if end <= begin:
                raise DataError(
                    f"--split {split} leaves the {name} split of {prefix} ({count} documents) "
                    "empty: use more documents, a larger share, or 0 samples for that split"
                )


def _fingerprint(prefixes: List[str]) -> str:
    """Hash of the .idx files: the document lengths fully determine Megatron's sample indices."""
    digest = hashlib.blake2b(digest_size=8)
    for prefix in prefixes:
        with open(prefix + ".idx", "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def rank_step_indices(
    consumed_samples: int,
    global_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    dataset_length: int,
) -> List[int]:
    """Dataset indices this rank reads in the step that starts after ``consumed_samples``.

    The step covers samples ``[c, c + global_batch_size)`` (modulo ``dataset_length``);
    rank r takes the contiguous r-th ``1/data_parallel_size`` of them. The one definition of
    sample order shared by :class:`MicrobatchStream` and the DALI loader
    (:mod:`megatron_ponder.data.dali_loader`).
    """
    per_rank = global_batch_size // data_parallel_size
    start = consumed_samples + data_parallel_rank * per_rank
    return [(start + i) % dataset_length for i in range(per_rank)]


def check_stream_layout(dataset, global_batch_size: int, micro_batch_size: int, data_parallel_rank: int,
                        data_parallel_size: int, consumed_samples: int) -> int:
    """One-line DataErrors for a microbatch stream's arguments (both loaders); returns the
    microbatches per step on each rank."""
    if min(global_batch_size, micro_batch_size, data_parallel_size) < 1:
        raise DataError(
            f"batch sizes and data-parallel size must be positive, got global "
            f"{global_batch_size}, micro {micro_batch_size}, data-parallel {data_parallel_size}"
        )
    if global_batch_size % (micro_batch_size * data_parallel_size) != 0:
        raise DataError(
            f"--global-batch-size {global_batch_size} is not a multiple of "
            f"--micro-batch-size x data-parallel size = {micro_batch_size} x "
            f"{data_parallel_size}: change one of them"
        )
    if not 0 <= data_parallel_rank < data_parallel_size:
        raise DataError(
            f"data-parallel rank {data_parallel_rank} outside 0..{data_parallel_size - 1}"
        )
    if consumed_samples < 0:
        raise DataError(f"consumed_samples must be >= 0, got {consumed_samples}")
    if dataset is None or len(dataset) == 0:
        raise DataError("the dataset is empty: request more samples or check --data-path")
    return global_batch_size // (micro_batch_size * data_parallel_size)


class MicrobatchStream:
    """This rank's microbatches of successive global batches of a dataset.

    Step k covers samples ``[c, c + global_batch_size)`` (indices modulo ``len(dataset)``),
    where c = ``consumed_samples`` before the step; rank r takes the contiguous r-th
    ``1/data_parallel_size`` of them, cut into microbatches of ``micro_batch_size``. The
    position depends on ``consumed_samples`` alone, so a run resumed with the checkpointed
    count sees exactly the continuation, on any data-parallel size.
    """

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        consumed_samples: int = 0,
    ) -> None:
        self.num_microbatches = check_stream_layout(dataset, global_batch_size, micro_batch_size,
                                                    data_parallel_rank, data_parallel_size, consumed_samples)
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.consumed_samples = consumed_samples

    def next_step(self) -> List[Dict[str, Optional[torch.Tensor]]]:
        """``num_microbatches`` dicts of ``tokens``/``labels``/``position_ids`` [b, L] int64,
        ``loss_mask`` [b, L] float32 and ``attention_mask`` (b = micro_batch_size): None (causal),
        or the samples' document masks [b, 1, L, L] bool, True = masked (``reset_attention_mask``)."""
        indices = rank_step_indices(self.consumed_samples, self.global_batch_size,
                                    self.data_parallel_rank, self.data_parallel_size, len(self.dataset))
        per_rank, b = len(indices), self.micro_batch_size
        batches = [self._collate(indices[i : i + b]) for i in range(0, per_rank, b)]
        self.consumed_samples += self.global_batch_size
        return batches

    def _collate(self, indices: List[int]) -> Dict[str, Optional[torch.Tensor]]:
        samples = [self.dataset[i] for i in indices]

        def stack(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.stack([torch.as_tensor(s[key]) for s in samples]).to(dtype)

        return {
            "tokens": stack("tokens", torch.int64),
            "labels": stack("labels", torch.int64),
            "loss_mask": stack("loss_mask", torch.float32),
            "position_ids": stack("position_ids", torch.int64),
            # Megatron's per-sample document masks [1, L, L] when the dataset builds them.
            "attention_mask": stack("attention_mask", torch.bool) if "attention_mask" in samples[0] else None,
        }


def check_data_fits_run(data_paths, seq_length: int, tokenizer_vocab_size: int, model_vocab_size: int) -> None:
    """All three checks for every prefix of the ``--data-path``/``--valid-data-path`` blends."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    for data_path in data_paths:
        blend = parse_data_path(data_path)
        for prefix in (blend[0] if blend else []):
            info = check_indexed_dataset(prefix)  # files present, index readable, sizes exact
            check_long_enough(prefix, info.tokens, seq_length)
            dtype = _IndexReader(os.fspath(prefix) + ".idx", multimodal=False).dtype
            check_token_ids(prefix, dtype, tokenizer_vocab_size, model_vocab_size)
