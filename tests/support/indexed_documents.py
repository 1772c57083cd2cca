"""Random token documents written as a Megatron indexed dataset (.bin/.idx), for data tests."""

from typing import Tuple

import numpy as np
import torch


def write_random_documents(prefix: str, documents: int, vocab: int, seed: int = 0,
                           lengths: Tuple[int, int] = (3, 41)) -> str:
    """``documents`` documents of ``lengths`` (low inclusive, high exclusive) random tokens below
    ``vocab - 1``, each followed by the EOD token ``vocab - 1``, written with Megatron's own
    ``IndexedDatasetBuilder``; returns ``prefix``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(documents):
        tokens = np.append(rng.integers(0, vocab - 1, rng.integers(*lengths)), vocab - 1)
        builder.add_document(torch.from_numpy(tokens), [len(tokens)])
    builder.finalize(prefix + ".idx")
    return prefix
