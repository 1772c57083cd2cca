"""Which Megatron-Core sharded strategy writes and reads a checkpoint: ``--ckpt-fully-parallel-save/-load``.

Megatron-Core's ``torch_dist`` strategy writes every shard from the rank that holds its main
replica (``replica_id == 0``). A tensor replicated across data-parallel ranks (every weight without
the distributed optimizer, the non-sharded ones with it) then has its main replica on DP rank 0, so
at DP = d rank 0 writes nearly the whole checkpoint while the other d - 1 ranks wait.

``--ckpt-fully-parallel-save`` (on by default, as in Megatron-LM) wraps the strategy in
``FullyParallelSaveStrategyWrapper`` over the data-parallel group (with context parallelism, the
DP x CP group, as Megatron-LM): the ranks exchange the shards' metadata only and re-elect one main
replica per shard so that each DP rank writes about 1/d of the bytes. The files and their contents
are those of a plain save (same global tensors, ``.metadata`` lists where each shard went): a
checkpoint loads the same way whichever way it was written, and reshards as before.

``--ckpt-fully-parallel-load`` (off by default, as in Megatron-LM) wraps the load strategy in
``FullyParallelLoadStrategyWrapper`` over the same group: each DP rank reads about 1/d of the
shards and the ranks exchange the rest (a broadcast per shard) instead of every rank reading all
of them from storage.

Neither flag changes what is saved, so neither is part of a run's identity (run_identity.py): a
run may resume with either value.
"""

from __future__ import annotations

from typing import Any, Optional


def _parallelization_group():
    """The group over which shards are shared out: DP x CP, as Megatron-LM's checkpointing uses."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy(fully_parallel: bool) -> Optional[Any]:
    """The sharded save strategy for ``dist_checkpointing.save``; None: Megatron-Core's default.

    ``fully_parallel``: Megatron-Core's default ``torch_dist`` strategy wrapped in
    ``FullyParallelSaveStrategyWrapper`` (module docstring). The distribution is not cached
    between saves (Megatron-LM caches it only with ``--ckpt-assume-constant-structure``): one
    metadata all-gather per save keeps it right when the state's structure changes.
    """
    if not fully_parallel:
        return None
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"),
                                            _parallelization_group(), False)


def async_save_strategy(fully_parallel: bool) -> Optional[Any]:
    """:func:`save_strategy` for ``--async-save``: the wrapper where it can write asynchronously.

    Every supported Megatron-Core (0.16 - 0.19) gives the wrapper an ``async_save`` that
    distributes the shards and hands the write to the wrapped strategy's. A release whose wrapper
    lacks it would make ``dist_checkpointing.save(..., async_sharded_save=True)`` fail: the save is
    then not fully parallel, and the log says so.
    """
    strategy = save_strategy(fully_parallel)
    if strategy is not None and not callable(getattr(strategy, "async_save", None)):
        from megatron_ponder.runtime.parallel_init import print_rank0

        print_rank0("--ckpt-fully-parallel-save: this Megatron-Core's FullyParallelSaveStrategyWrapper has no "
                    "async_save; --async-save writes each shard from its main replica (DP rank 0) instead")
        return None
    return strategy


def load_strategy(folder: str, fully_parallel: bool) -> Optional[Any]:
    """The sharded load strategy for ``dist_checkpointing.load`` of ``folder``; None: Megatron-Core's default.

    ``fully_parallel``: Megatron-Core's default strategy for the folder wrapped in
    ``FullyParallelLoadStrategyWrapper`` (module docstring); with one DP rank the wrapper reads
    directly, as without it.
    """
    if not fully_parallel:
        return None
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

    return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(folder), _parallelization_group())
