"""Process-group and Megatron model-parallel initialisation for one process or torchrun.

:func:`initialize_parallel`, used by the tests and the training entry point, starts
``torch.distributed`` from torchrun's environment (or as a world of one), applies the CPU
runtime when there is no GPU, builds Megatron's TP/PP/CP/DP groups and seeds the
model-parallel RNG tracker; :func:`shutdown_parallel` ends a run on every rank together;
:func:`print_rank0` prints once per job; :func:`leave_together` makes every rank of a failed
job exit with the same code. :func:`configure_pipeline_p2p` adapts the schedules' p2p settings
to the backend.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_ponder.runtime.transformer_engine import select_local_device


def initialize_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 10,
) -> None:
    """Initialise distributed state; safe to call again with the same sizes.

    Backend: NCCL when CUDA is available, gloo (plus :func:`enable_cpu_megatron`) otherwise.
    Without torchrun's ``RANK``/``WORLD_SIZE`` it runs as a world of one on a free local port.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        from megatron_ponder.runtime.cpu import enable_cpu_megatron

        enable_cpu_megatron()

    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        # A world of one picks a free local port itself, without writing it into os.environ:
        # child processes (torchrun jobs, scripts) started later must not inherit it.
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        if use_cuda:
            select_local_device()
        global _STORE
        _STORE = _store_for_this_attempt(host, port, rank, world_size, timedelta(minutes=timeout_minutes))
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=_STORE,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )

    world_size = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size * context_parallel_size
    if world_size % model_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor x pipeline x context parallel "
            f"size {model_parallel}: choose sizes whose product divides the number of processes"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
    )
    model_parallel_cuda_manual_seed(seed)


def configure_pipeline_p2p(config) -> None:
    """Set the model config's pipeline p2p options for this backend (once, when the schedule is set up).

    gloo: batched isend/irecv mis-pairs same-direction messages when the next and the previous
    pipeline rank are one process (PP=2), silently giving wrong results, so p2p runs unbatched.
    """
    if config.pipeline_model_parallel_size > 1 and dist.is_initialized() and dist.get_backend() == "gloo":
        config.batch_p2p_comm = False


def shutdown_parallel() -> None:
    """Leave together: barrier, then tear down Megatron's groups and the process group.

    Why: a process that exits while a peer still talks to it (gloo pair threads of the
    pipeline or data-parallel groups) can abort in C++ with "terminate called without an
    active exception"; a final barrier followed by an explicit destroy ends every rank cleanly.
    """
    from megatron.core import parallel_state

    if not dist.is_initialized():
        return
    dist.barrier()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


_STORE = None  # the rendezvous store of this process's group (initialize_parallel)


def leave_together(timeout_s: float = 120.0) -> None:
    """Before a failed job's ranks exit with one code: every rank waits until all have got here.

    Under torchrun the agent stops the other workers with SIGTERM as soon as the first one exits
    non-zero, so a rank still starting (importing, rendezvous) would die of the signal (exit
    -15) instead of exiting with the error's code. Each rank here ignores SIGTERM from now on (the
    agent kills with SIGKILL 30 s after its SIGTERM anyway) and meets the others at a barrier on
    the rendezvous store, which exists before the process group does (flag errors come first),
    for at most ``timeout_s``. Use only for errors that every rank raises (deterministic checks,
    or shared: training/rank_agreement.py). A world of one returns at once.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        store = _STORE
        if store is None:
            rank = int(os.environ.get("RANK", "0"))
            store = _store_for_this_attempt(os.environ.get("MASTER_ADDR", "127.0.0.1"),
                                            int(os.environ["MASTER_PORT"]), rank, world_size,
                                            timedelta(seconds=timeout_s))
        store.add("leave_together", 1)
        deadline = time.monotonic() + timeout_s
        while store.add("leave_together", 0) < world_size and time.monotonic() < deadline:
            time.sleep(0.05)
    except (RuntimeError, KeyError, ValueError, OSError):  # no store to meet at: leave alone
        pass


def _store_for_this_attempt(host: str, port: int, rank: int, world_size: int, timeout: timedelta):
    """The rendezvous store, namespaced by torchrun's restart count.

    Under torchrun the agent hosts one TCPStore for the whole job. After ``--max-restarts``
    restarts the workers, the keys the previous attempt's process groups published (the gloo
    addresses of rank 0 of each group) are still there under the same group names, so the new
    workers would connect to dead addresses. A per-attempt prefix keeps every attempt apart.
    """
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host, port, world_size, is_master=not agent_hosts_store and rank == 0, timeout=timeout,
    )
    return dist.PrefixStore(f"megatron_ponder/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_rank0(*parts) -> None:
    """``print`` on rank 0 only (on every call before torch.distributed starts)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*parts, flush=True)
