"""torchrun worker (TP=2 + sequence parallel): count the collectives of one forward+backward.

Latent mode must add no collective beyond its extra passes: with N thoughts and J Jacobi rounds
it runs 1 + (N + J) transformer passes where mode `none` runs one, so its count must be
``count(none) + (N + J) * count(one transformer pass)``. Interleaving, Jacobi updates and
selecting the last-thought slots before the output layer are all shard-local.

torch.distributed is instrumented before Megatron is imported (Megatron binds some collectives to
module-level names at import time).
"""

from __future__ import annotations

import collections
import sys

import torch

from support.worker import run_worker, wrap_collectives

COUNTS: collections.Counter = collections.Counter()
COLLECTIVES = [
    "all_reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base", "reduce_scatter",
    "reduce_scatter_tensor", "_reduce_scatter_base", "broadcast", "all_to_all", "all_to_all_single",
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "barrier",
]

wrap_collectives(COLLECTIVES, lambda name, args, kwargs: COUNTS.update([name]))


def count(fn) -> dict:
    COUNTS.clear()
    fn()
    return dict(COUNTS)


def count_collectives() -> dict:
    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from support.tiny_models import random_batch, tiny_model

    initialize_parallel(tensor_model_parallel_size=2)
    tokens, labels, positions = random_batch(2, 8)
    results = {}

    def model_for(**fields):
        return tiny_model("llama", tensor_model_parallel_size=2, sequence_parallel=True, **fields)

    none_model = model_for(ponder_mode="none")
    results["none"] = count(lambda: none_model(tokens, positions, None, labels=labels).sum().backward())

    def one_pass():
        hidden = torch.randn(8 // 2, 2, 32, requires_grad=True)
        rotary = none_model.rotary_for_positions(positions)
        none_model.transformer_pass(hidden, None, rotary).sum().backward()

    results["one_pass"] = count(one_pass)
    for thoughts, rounds in [(1, 2), (2, 3)]:
        latent = model_for(ponder_mode="latent", num_latent_thoughts=thoughts)
        results[f"latent_N{thoughts}_J{rounds}"] = count(
            lambda: latent(tokens, positions, None, labels=labels, num_jacobi_rounds=rounds).sum().backward()
        )
    return results


if __name__ == "__main__":
    run_worker(count_collectives, sys.argv[1])
