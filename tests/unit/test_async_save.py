"""--async-save through Megatron-Core's dist_checkpointing async path (training/checkpointing/save_load.py):
the shards are written by a background process from a snapshot, and the latest pointer and the
retention move only when the save is finalized; a failed background write is the one-line
CheckpointError of a synchronous save. World of one (the same calls run on every rank)."""

import os

import pytest
import torch
from megatron.core import dist_checkpointing

from support.tiny_models import tiny_model

from megatron_ponder.training.checkpointing.save_load import (
    AsyncSaves,
    CheckpointError,
    checkpoint_dir,
    latest_iteration,
    save_checkpoint,
)


def _save(root, iteration, model, async_saves=None, keep_last=None):
    return save_checkpoint(str(root), iteration, model, None, None, consumed_samples=iteration, run_args={},
                           distributed_optimizer=False, save_optimizer=False, keep_last=keep_last,
                           async_saves=async_saves)


def _stored_weights(model, folder):
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, folder)["model"]
    return {k: v for k, v in loaded.items() if torch.is_tensor(v)}


def test_pointer_and_retention_move_only_when_the_save_is_finalized(megatron_world_of_one, tmp_path):
    model = tiny_model("llama")
    root = tmp_path / "ckpt"
    root.mkdir()
    assert _save(root, 1, model) == checkpoint_dir(str(root), 1)  # synchronous: complete on return
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}

    saves = AsyncSaves()
    assert _save(root, 2, model, saves, keep_last=1) is None
    folder = checkpoint_dir(str(root), 2)
    with torch.no_grad():  # training goes on while the background process writes
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert latest_iteration(str(root)) == 1
    assert not dist_checkpointing.check_is_distributed_checkpoint(folder)  # metadata.json comes at the end
    assert os.path.isdir(checkpoint_dir(str(root), 1))  # retention waits too

    assert saves.maybe_finalize_async_calls(blocking=True) == [folder]
    assert latest_iteration(str(root)) == 2
    assert dist_checkpointing.check_is_distributed_checkpoint(folder)
    assert not os.path.exists(checkpoint_dir(str(root), 1))  # --keep-last-checkpoints 1
    assert saves.maybe_finalize_async_calls(blocking=True) == []  # nothing in flight: no collective

    stored = _stored_weights(model, folder)
    assert stored and all(torch.equal(stored[k], before[k]) for k in stored)  # the weights as of the save


def test_failed_background_write_is_one_checkpoint_error(megatron_world_of_one, tmp_path, monkeypatch):
    model = tiny_model("llama")
    root = tmp_path / "ckpt"
    root.mkdir()
    _save(root, 1, model)
    monkeypatch.setenv("PONDER_FAULT_INJECT", "async-write-fails:2")  # the writer's shard files fail to open
    saves = AsyncSaves()
    _save(root, 2, model, saves)
    with pytest.raises(CheckpointError) as error:
        saves.maybe_finalize_async_calls(blocking=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot write checkpoint {checkpoint_dir(str(root), 2)}: ")
    assert "Input/output error" in message or "OSError" in message  # 0.16 passes the error on, 0.17+ its type
    assert "the latest pointer still names the previous checkpoint" in message
    assert latest_iteration(str(root)) == 1
    assert saves.pending is None and saves.maybe_finalize_async_calls(blocking=True) == []
