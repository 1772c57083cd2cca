"""The frame every torchrun test worker runs in, and the pieces two or more of them share.

A worker script ends with ``run_worker(main, out)``: warnings off (the result is a JSON file,
the log is only read on failure), ``main()`` builds its parallel layout and returns the results,
rank 0 (or every rank, ``out.rank<r>.json``) writes them, and the parallel state is shut down
on every rank together. Workers import this as ``support.worker``: the tests start them with
:func:`support.torchrun.child_env`, whose PYTHONPATH holds the repository and ``tests/``.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist


def run_worker(main: Callable[[], Optional[dict]], out: Optional[str], every_rank: bool = False) -> None:
    """Run ``main`` and write what it returns to ``out`` as JSON (rank 0 only, or every rank to
    ``out.rank<r>.json`` with ``every_rank``); nothing is written when either is None."""
    from megatron_ponder.runtime.parallel_init import shutdown_parallel

    warnings.filterwarnings("ignore")
    results = main()
    if results is not None and out:
        if every_rank:
            _write(results, f"{out}.rank{dist.get_rank()}.json")
        elif dist.get_rank() == 0:
            _write(results, out)
    shutdown_parallel()


def _write(results: dict, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)


def wrap_collectives(names: Iterable[str], on_call: Callable[[str, tuple, dict], None]) -> None:
    """Replace each ``torch.distributed.<name>`` that exists by a wrapper that calls
    ``on_call(name, args, kwargs)`` first. Call before Megatron is imported: it binds some
    collectives to module-level names at import time."""
    for name in names:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def wrapped(*args, __original=original, __name=name, **kwargs):
            on_call(__name, args, kwargs)
            return __original(*args, **kwargs)

        setattr(dist, name, wrapped)


def save_initial_checkpoint(model: torch.nn.Module, folder: str) -> None:
    """The model's (sharded) weights, the common start of every layout the test compares."""
    from megatron.core import dist_checkpointing

    os.makedirs(folder, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), folder)


def train_from_checkpoint(model: torch.nn.Module, folder: str, optimizer_config, steps: int,
                          microbatches: Callable[[int], List[dict]], micro_batch_size: int,
                          seq_length: int, wrap_options: Optional[dict] = None,
                          on_wrapped: Optional[Callable[[list, list], None]] = None) -> Dict[str, list]:
    """Load ``folder`` into ``model``, train ``steps`` optimizer steps on ``microbatches(step)``.

    ``wrap_options``: extra arguments of ``wrap_and_build_optimizer`` (e.g. the DDP overlap);
    ``on_wrapped(chunks, current_step)``: called once with the DDP chunks and a one-element list
    holding the step being run (for instrumentation).

    Returns the global mean loss, grad norm, Jacobi residuals (latent mode) and pass count of
    every step.
    """
    from megatron.core import dist_checkpointing

    from megatron_ponder.model.passes import plan_for_config
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), folder))
    chunks, optimizer = wrap_and_build_optimizer([model], optimizer_config, **(wrap_options or {}))
    current_step = [0]
    if on_wrapped is not None:
        on_wrapped(chunks, current_step)
    losses, grad_norms, residuals, passes = [], [], [], []
    for step in range(steps):
        current_step[0] = step
        result = train_step(chunks, optimizer, microbatches(step), micro_batch_size, seq_length, iteration=step)
        losses.append(result.loss)
        grad_norms.append(result.grad_norm)
        residuals.append(result.jacobi_residuals)
        passes.append(len(plan_for_config(model.config, result.jacobi_rounds)))
    return dict(losses=losses, grad_norms=grad_norms, jacobi_residuals=residuals, passes=passes)
