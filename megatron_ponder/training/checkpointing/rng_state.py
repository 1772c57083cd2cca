"""The random generators in a checkpoint, so that a resume with dropout > 0 is bit-exact.

Dropout draws from torch's default generator (CPU, or CUDA on a GPU) and, inside
tensor-parallel regions, from Megatron's RNG tracker states. One ShardedObject per
(pipeline, tensor, context) rank holds them; data-parallel replicas run the same draws, so
data-parallel rank 0 writes it (as in Megatron-LM). A resume with another layout cannot
continue those streams: it keeps its fresh generators and says so.
"""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject

KEY = "rng_state"


def _layout():
    sizes = (parallel_state.get_pipeline_model_parallel_world_size(),
             parallel_state.get_tensor_model_parallel_world_size(),
             parallel_state.get_context_parallel_world_size())
    ranks = (parallel_state.get_pipeline_model_parallel_rank(),
             parallel_state.get_tensor_model_parallel_rank(),
             parallel_state.get_context_parallel_rank())
    return sizes, ranks


def rng_sharded_object() -> ShardedObject:
    """This rank's generator states as the checkpoint's ``rng_state`` entry."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    states = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    sizes, ranks = _layout()
    return ShardedObject(KEY, states, sizes, ranks, replica_id=parallel_state.get_data_parallel_rank())


def rng_request(stored_args: dict, stored_keys) -> Optional[ShardedObject]:
    """The entry to load, or None when the checkpoint has none for this layout."""
    sizes, _ = _layout()
    saved_sizes = (stored_args.get("pipeline_model_parallel_size"), stored_args.get("tensor_model_parallel_size"),
                   stored_args.get("context_parallel_size"))
    stored = any(key == KEY or key.startswith(KEY + "/") for key in stored_keys)  # objects: KEY/shard_...
    if not stored or saved_sizes != sizes:
        return None
    return rng_sharded_object()


def restore_rng(states: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    get_cuda_rng_tracker().set_states(states["tracker"])
