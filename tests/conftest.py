"""Shared fixtures: Megatron-Core initialised as a world of one on CPU (gloo); one intra-op thread.

On a GPU machine the CPU suite still runs on the CPU (support/cuda_visibility.py): CUDA is
hidden unless pytest was asked for tests/gpu alone.
"""

import os
from pathlib import Path

import pytest
import torch

from support.cuda_visibility import hide_cuda_unless_only_gpu_tests, only_gpu_tests_asked

# Two workers at most: a torchrun test already starts 2-4 processes, so more workers only
# oversubscribe the cores (and stretch the tests' timeouts) on the 2-core CI machine and on
# anything larger alike; two still pair the one-process tests, which use one core each.
MAX_WORKERS = 2


def pytest_configure(config):
    # Before collection: tests/gpu's skip conditions and every later import see the choice.
    hide_cuda_unless_only_gpu_tests(config.args, Path(config.invocation_params.dir))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        # An xdist worker shares the cores with the others: intra-op threads beyond its share
        # contend (two threads per process on two cores made a step 40x slower).
        threads = max(1, _cores() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the processes a test starts


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; plain pytest runs without it
def pytest_xdist_auto_num_workers(config):
    """The worker count of ``-n auto`` (the README's test command): 0 (this process) for
    tests/gpu alone, whose tests share the one GPU, for one file (``--dist loadfile`` keeps a
    file on one worker anyway) and on a one-core machine; else two."""
    invocation_dir = Path(config.invocation_params.dir)
    if only_gpu_tests_asked(config.args, invocation_dir):
        return 0
    paths = {arg.split("::")[0] for arg in config.args if not arg.startswith("-")}
    if len(paths) == 1 and (invocation_dir / next(iter(paths))).is_file():
        return 0
    return 0 if _cores() < 2 else MAX_WORKERS


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
