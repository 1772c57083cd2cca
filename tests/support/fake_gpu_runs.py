"""A tiny training run built the way a GPU run builds it, inside ``tools.fake_gpu``.

:func:`fake_gpu_run` enters the fake GPU as one rank of a layout, then goes through the training
entry point's own builders (``training/build.py``): flags -> ``finalize_args`` -> Megatron's
groups -> ``prepare_data`` (mock data, Megatron's MockGPTDataset) -> ``model_config`` (CUDA is
"available", so ``use_cpu_initialization`` is False) -> ``build_training_state`` (``model.cuda()``,
bf16 Float16Module, DDP, Megatron's optimizer) -> the default loader (``MicrobatchStream``, host
batches). Values are fake: tests look at devices, shapes and control flow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional

from tools.fake_gpu import FakeGPU, fake_gpu

# Method modes by their --ponder-mode value.
MODES = ("none", "ponder", "latent")


@dataclass(frozen=True)
class Layout:
    """Parallel sizes of a fake world; ``rank`` is the rank this process poses as."""

    name: str
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    rank: int = 0

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp


# Rank 1 where there is one: not the rank that code paths "if rank == 0" favour.
LAYOUTS = (
    Layout("single"),
    Layout("tp2", tp=2, rank=1),
    Layout("pp2-first", pp=2, rank=0),
    Layout("pp2-last", pp=2, rank=1),
    Layout("dp2-distopt", dp=2, rank=1),
    Layout("cp2", cp=2, rank=1),
    # A middle stage: in no embedding group (ponder's untied feedback copy lives on the first and last).
    Layout("pp4-middle", pp=4, rank=1),
)

SEQ_LENGTH = 16
MICRO_BATCH = 1


def run_flags(mode: str, layout: Layout) -> List[str]:
    """Training flags of a tiny llama-style model in ``mode`` and ``layout`` (2 microbatches per
    pipeline stage and data-parallel rank, so the pipeline schedules interleave)."""
    flags = [
        "--mock-data", "--transformer-impl", "local", "--bf16",
        "--num-layers", str(max(2, layout.pp)), "--hidden-size", "32", "--num-attention-heads", "4", "--num-query-groups", "2",
        "--ffn-hidden-size", "48", "--seq-length", str(SEQ_LENGTH), "--vocab-size", "64",
        "--micro-batch-size", str(MICRO_BATCH), "--global-batch-size", str(2 * MICRO_BATCH * layout.dp * layout.pp),
        "--train-iters", "4", "--eval-iters", "1",
        "--tensor-model-parallel-size", str(layout.tp), "--pipeline-model-parallel-size", str(layout.pp),
        "--context-parallel-size", str(layout.cp), "--ponder-mode", mode,
    ]
    if layout.dp > 1:
        flags.append("--use-distributed-optimizer")
    return flags


@dataclass
class FakeGpuRun:
    """What the entry point builds, on the fake GPU (see the module docstring)."""

    gpu: FakeGPU
    args: object
    config: object
    model: object
    chunks: list
    optimizer: object
    scheduler: object
    train_set: object
    valid_set: object

    def stream(self, dataset, consumed: int = 0):
        """The entry point's loader over ``dataset`` for this rank (host batches)."""
        from megatron.core import parallel_state

        from megatron_ponder.training.build import microbatch_stream

        return microbatch_stream(self.args, dataset, parallel_state.get_data_parallel_rank(),
                                 parallel_state.get_data_parallel_world_size(), consumed)


@contextlib.contextmanager
def fake_gpu_run(mode: str, layout: Layout, extra_flags: Optional[List[str]] = None) -> Iterator[FakeGpuRun]:
    """Rank ``layout.rank`` of ``layout`` on the fake GPU, built by the entry point's builders."""
    from megatron_ponder.training.arguments import finalize_args, parse_args
    from megatron_ponder.training.build import build_training_state, prepare_data
    from megatron_ponder.training.model_config import model_config

    args = parse_args(run_flags(mode, layout) + list(extra_flags or []))
    with fake_gpu(world_size=layout.world_size, rank=layout.rank) as gpu:
        finalize_args(args, layout.world_size)
        gpu.initialize_parallel(layout.tp, layout.pp, layout.cp, seed=args.seed)
        train_set, valid_set = prepare_data(args)
        config = model_config(args)
        model, chunks, optimizer, scheduler = build_training_state(args, config)
        yield FakeGpuRun(gpu, args, config, model, chunks, optimizer, scheduler, train_set, valid_set)
