"""Shared fixtures: Megatron-Core initialised as a world of one on CPU (gloo); one intra-op thread."""

import pytest
import torch


@pytest.fixture(scope="session")
def megatron_world_of_one():
    """Initialise torch.distributed (gloo) and Megatron's parallel state with all sizes 1."""
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    yield


@pytest.fixture
def single_intra_op_thread():
    """One intra-op thread for tiny-model tests: on 2 cores thread sync dominates otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def causal_mask(length: int) -> torch.Tensor:
    """[1, 1, L, L] bool, True above the diagonal (masked), as Megatron's local attention expects."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)[None, None]
