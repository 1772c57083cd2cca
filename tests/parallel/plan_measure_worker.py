"""torchrun worker: measure what the planner predicts, in real training steps on gloo.

For every (mode, recompute) case: one ``train_step`` of a tiny model in the given layout,
recording on each rank the parameter bytes, the peak bytes of activations saved for backward
(:mod:`saved_tensor_probe`) and the payload bytes of every torch.distributed collective and p2p
call, by the parallelism its process group belongs to. Each rank writes ``OUT.rank<r>.json``.

torch.distributed is wrapped before Megatron is imported (Megatron binds some collectives to
module-level names at import time).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json

import torch
import torch.distributed as dist

from megatron_ponder.variants import MODES as METHOD_MODES
from megatron_ponder.variants import RECOMPUTE, variant
from support.worker import run_worker, wrap_collectives

# (parallelism, op) -> payload bytes; ``GROUPS`` maps process groups to parallelisms once built.
PAYLOAD: collections.Counter = collections.Counter()
GROUPS: dict = {}
RECORDING = [False]


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _group_of(kwargs, args, position):
    group = kwargs.get("group", args[position] if len(args) > position else None)
    return group if group is not None else dist.group.WORLD


PAYLOADS = {
    # name: (op, payload(args, kwargs), index of the positional ``group`` argument)
    "all_reduce": ("all_reduce", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
    "all_gather_into_tensor": ("all_gather", lambda a, k: _nbytes(a[0] if a else k["output_tensor"]), 2),
    "_all_gather_base": ("all_gather", lambda a, k: _nbytes(a[0] if a else k["output_tensor"]), 2),
    "all_gather": ("all_gather", lambda a, k: sum(_nbytes(t) for t in (a[0] if a else k["tensor_list"])), 2),
    "reduce_scatter_tensor": ("reduce_scatter", lambda a, k: _nbytes(a[1] if len(a) > 1 else k["input"]), 3),
    "_reduce_scatter_base": ("reduce_scatter", lambda a, k: _nbytes(a[1] if len(a) > 1 else k["input"]), 3),
    "reduce_scatter": ("reduce_scatter", lambda a, k: sum(_nbytes(t) for t in (a[1] if len(a) > 1 else k["input_list"])), 3),
    "broadcast": ("broadcast", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
    "send": ("send", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
    "isend": ("send", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
    "recv": ("recv", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
    "irecv": ("recv", lambda a, k: _nbytes(a[0] if a else k["tensor"]), 2),
}


def _record(name: str, args: tuple, kwargs: dict) -> None:
    if not RECORDING[0]:
        return
    op, payload, group_position = PAYLOADS[name]
    group = _group_of(kwargs, args, group_position)
    if dist.get_world_size(group) > 1:
        # Megatron's p2p uses extra even/odd pipeline groups; p2p is only PP here.
        kind = "pp" if op in ("send", "recv") else GROUPS.get(group, "other")
        PAYLOAD[(kind, op)] += payload(args, kwargs)


def _instrument():
    wrap_collectives(PAYLOADS, _record)
    for name in ("batch_isend_irecv", "all_to_all", "all_to_all_single"):

        def refused(*args, __name=name, **kwargs):
            raise AssertionError(f"{__name} is not counted by this worker")

        setattr(dist, name, refused)


_instrument()

# J fixed at 2: the planner is asked about one step with a known J.
MODES = {name: variant(name, rounds=(2, 2)) for name in METHOD_MODES}
# Global batch 4 per data-parallel rank: 2 microbatches of 2 (the looped pipeline needs m >= pp).
SEQ_LENGTH, MICRO_BATCH, MICROBATCHES = 8, 2, 2


def _map_groups():
    from megatron.core import parallel_state as ps

    for name, group in [
        ("tp", ps.get_tensor_model_parallel_group()),
        ("pp", ps.get_pipeline_model_parallel_group()),
        ("pp", ps.get_embedding_group()),
        ("cp", ps.get_context_parallel_group()),
        ("dp", ps.get_data_parallel_group()),
        ("dp", ps.get_data_parallel_group(with_context_parallel=True)),
    ]:
        GROUPS.setdefault(group, name)


def _microbatches(dp_rank: int):
    from support.tiny_models import random_batch

    tokens, labels, positions = random_batch(MICRO_BATCH * MICROBATCHES, SEQ_LENGTH, seed=dp_rank)
    return [
        dict(tokens=tokens[i : i + MICRO_BATCH], labels=labels[i : i + MICRO_BATCH],
             position_ids=positions[i : i + MICRO_BATCH], loss_mask=torch.ones_like(tokens[i : i + MICRO_BATCH]),
             attention_mask=None)
        for i in range(0, MICRO_BATCH * MICROBATCHES, MICRO_BATCH)
    ]


def measure_layout(layout: dict) -> dict:
    """Every case of ``layout`` (keys: style, tp, pp, [cp], sp, distributed_optimizer, cases)."""
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step
    from support.saved_tensor_probe import SavedTensorPeak, parameter_bytes
    from support.tiny_models import tiny_model

    initialize_parallel(tensor_model_parallel_size=layout["tp"], pipeline_model_parallel_size=layout["pp"],
                        context_parallel_size=layout.get("cp", 1))
    GROUPS.clear()
    _map_groups()
    batches = _microbatches(parallel_state.get_data_parallel_rank())
    results = {}
    for case in layout["cases"]:
        mode, recompute = case.split(":")
        model = tiny_model(
            layout["style"], tensor_model_parallel_size=layout["tp"], pipeline_model_parallel_size=layout["pp"],
            context_parallel_size=layout.get("cp", 1), pipeline_dtype=torch.float32,
            sequence_parallel=layout["sp"], calculate_per_token_loss=True,
            **MODES[mode], **RECOMPUTE[recompute],
        )
        chunks, optimizer = wrap_and_build_optimizer(
            [model], OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=layout["distributed_optimizer"])
        )
        gc.collect()
        probe = SavedTensorPeak(model.parameters())
        PAYLOAD.clear()
        RECORDING[0] = True
        with probe.measuring():
            train_step(chunks, optimizer, batches, MICRO_BATCH, SEQ_LENGTH, iteration=0)
        RECORDING[0] = False
        results[case] = dict(
            stage=parallel_state.get_pipeline_model_parallel_rank(),
            parameter_bytes=parameter_bytes(model),
            activation_peak=probe.peak,
            payload={f"{group}/{op}": nbytes for (group, op), nbytes in PAYLOAD.items()},
        )
        del chunks, optimizer, model
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", required=True, help="JSON: {name: {style, tp, pp, sp, distributed_optimizer, cases}}")
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args()
    layouts = json.loads(arguments.layouts)
    run_worker(lambda: {name: measure_layout(layout) for name, layout in layouts.items()}, arguments.out,
               every_rank=True)
