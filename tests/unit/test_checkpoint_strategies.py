"""``--ckpt-fully-parallel-save/-load`` pick Megatron-Core's fully parallel strategy wrappers
(training/checkpointing/strategies.py), over the data-parallel group, for synchronous and async saves
and for loads; neither flag is part of a run's identity. World of one (the wrappers then write and
read as the plain strategy does; tests/parallel/test_fully_parallel_checkpoints.py runs DP=2)."""

import functools

import pytest
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)

from support.tiny_models import tiny_model

from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.checkpointing import strategies
from megatron_ponder.training.checkpointing.save_load import (
    AsyncSaves,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from megatron_ponder.training.checkpointing.run_identity import OPTIMIZER_STATE_FLAGS, identity_flags


def test_flags_have_megatron_lm_names_and_defaults():
    args = parse_args(["--mock-data"])
    assert args.ckpt_fully_parallel_save is True and args.ckpt_fully_parallel_load is False
    args = parse_args(["--mock-data", "--no-ckpt-fully-parallel-save", "--ckpt-fully-parallel-load"])
    assert args.ckpt_fully_parallel_save is False and args.ckpt_fully_parallel_load is True
    # How the checkpoint is written or read is no part of what it holds: a resume may change both.
    for dest in ("ckpt_fully_parallel_save", "ckpt_fully_parallel_load"):
        assert dest not in identity_flags(args) and dest not in OPTIMIZER_STATE_FLAGS


def test_the_flags_pick_the_wrappers_over_the_data_parallel_group(megatron_world_of_one, tmp_path):
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    save = strategies.save_strategy(True)
    assert isinstance(save, FullyParallelSaveStrategyWrapper) and save.parallelization_group is group
    assert strategies.save_strategy(False) is None  # Megatron-Core's default
    assert isinstance(strategies.async_save_strategy(True), FullyParallelSaveStrategyWrapper)
    root = tmp_path / "ckpt"
    root.mkdir()
    _save(root, 1, tiny_model("llama"), fully_parallel=False)  # 0.16 reads the folder to pick the base strategy
    load = strategies.load_strategy(checkpoint_dir(str(root), 1), True)
    assert isinstance(load, FullyParallelLoadStrategyWrapper) and load.parallelization_group is group
    assert strategies.load_strategy(checkpoint_dir(str(root), 1), False) is None


def test_an_async_path_without_the_wrapper_says_so(megatron_world_of_one, monkeypatch, capsys):
    class WrapperWithoutAsyncSave:  # what a release without FullyParallelSaveStrategyWrapper.async_save has
        pass

    monkeypatch.setattr(strategies, "save_strategy", lambda fully_parallel: WrapperWithoutAsyncSave())
    assert strategies.async_save_strategy(True) is None
    assert "has no async_save" in capsys.readouterr().out


def _spy(monkeypatch, name):
    """Record the sharded_strategy every dist_checkpointing.<name> call gets, then make the call."""
    seen = []
    real = getattr(dist_checkpointing, name)

    @functools.wraps(real)  # the same signature (megatron_compat inspects save's parameters)
    def recording(*args, **kwargs):
        seen.append(kwargs.get("sharded_strategy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dist_checkpointing, name, recording)
    return seen


def _save(root, iteration, model, fully_parallel, async_saves=None):
    return save_checkpoint(str(root), iteration, model, None, None, consumed_samples=iteration, run_args={},
                           distributed_optimizer=False, save_optimizer=False, async_saves=async_saves,
                           fully_parallel=fully_parallel)


@pytest.mark.parametrize("fully_parallel", [True, False])
def test_save_and_load_go_through_the_chosen_strategy(megatron_world_of_one, monkeypatch, tmp_path, fully_parallel):
    model = tiny_model("llama")
    root = tmp_path / "ckpt"
    root.mkdir()
    saves = _spy(monkeypatch, "save")
    _save(root, 1, model, fully_parallel)
    async_saves = AsyncSaves()
    _save(root, 2, model, fully_parallel, async_saves)  # --async-save: the same strategy
    assert async_saves.maybe_finalize_async_calls(blocking=True) == [checkpoint_dir(str(root), 2)]
    assert [isinstance(s, FullyParallelSaveStrategyWrapper) for s in saves] == [fully_parallel] * 2

    loads = _spy(monkeypatch, "load")
    expected = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    resumed = load_checkpoint(str(root), model, None, None, load_optimizer=False, distributed_optimizer=False,
                              fully_parallel=fully_parallel)
    assert resumed.iteration == 2
    assert [isinstance(s, FullyParallelLoadStrategyWrapper) for s in loads] == [fully_parallel]
    restored = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert all(torch.equal(restored[k], expected[k]) for k in expected)
