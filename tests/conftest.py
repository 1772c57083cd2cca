"""Shared fixtures: Megatron-Core initialised as a world of one on CPU (gloo); one intra-op thread.

On a GPU machine the CPU suite still runs on the CPU (support/cuda_visibility.py): CUDA is
hidden unless pytest was asked for tests/gpu alone.
"""

from pathlib import Path

import pytest
import torch

from support.cuda_visibility import hide_cuda_unless_only_gpu_tests


def pytest_configure(config):
    # Before collection: tests/gpu's skip conditions and every later import see the choice.
    hide_cuda_unless_only_gpu_tests(config.args, Path(config.invocation_params.dir))


@pytest.fixture
def megatron_world_of_one():
    """torch.distributed (gloo) and Megatron's parallel state with all sizes 1, initialised once
    and again only after something shut it down: a test that runs ``pretrain.main`` in this
    process (tests/e2e) ends with :func:`shutdown_parallel`, which destroys both."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ponder.runtime.parallel_init import initialize_parallel

    if not (dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
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
