"""Shared fixtures: Megatron-Core initialised as a world of one on CPU (gloo)."""

import pytest
import torch


@pytest.fixture(scope="session")
def megatron_world_of_one():
    """Initialise torch.distributed (gloo) and Megatron's parallel state with all sizes 1."""
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    yield


def causal_mask(length: int) -> torch.Tensor:
    """[1, 1, L, L] bool, True above the diagonal (masked), as Megatron's local attention expects."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)[None, None]
