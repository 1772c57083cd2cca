"""--async-save end to end: the same checkpoints and the same resumed losses as synchronous saves,
in one process and under torchrun (2 gloo processes); a run killed while a save is in flight
keeps the previous checkpoint as the latest and resumes from it exactly."""

import os

import pytest
import torch

from support.metrics import train_losses
from support.torchrun import child_env, run_torchrun

TINY = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr-warmup-iters", "2", "--eval-iters", "0", "--log-interval", "1", "--save-interval", "2"]
LATEST = "latest_checkpointed_iteration.txt"


def checkpoint_tensors(folder):
    """Every tensor of a torch_dist checkpoint folder (model, optimizer), read without a process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    single = os.path.join(str(folder), "..", f"{os.path.basename(str(folder))}.pt")
    dcp_to_torch_save(str(folder), single)
    state = torch.load(single, weights_only=False)
    os.remove(single)
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def assert_same_checkpoint(a, b):
    tensors_a, tensors_b = checkpoint_tensors(a), checkpoint_tensors(b)
    assert tensors_a.keys() == tensors_b.keys() and any(k.startswith("optimizer.") for k in tensors_a)
    different = [k for k in tensors_a if not torch.equal(tensors_a[k], tensors_b[k])]
    assert not different, different[:5]


def _pretrain(argv):
    from megatron_ponder.pretrain import main

    return main([str(a) for a in argv])


@pytest.mark.slow
def test_async_saves_and_resume_equal_sync_saves(tmp_path):
    """One process: sync saves to 6; async saves with a stop at 4, resumed with --async-save to 6."""
    sync, run = tmp_path / "sync", tmp_path / "async"
    assert _pretrain(TINY + ["--train-iters", "6", "--save", sync, "--metrics-file", tmp_path / "sync.jsonl"]) == 0
    metrics = tmp_path / "async.jsonl"
    argv = TINY + ["--train-iters", "6", "--save", run, "--load", run, "--metrics-file", metrics, "--async-save"]
    assert _pretrain(argv + ["--exit-interval", "4"]) == 0
    assert (run / LATEST).read_text() == "4"  # finalized before the exit
    assert_same_checkpoint(sync / "iter_0000004", run / "iter_0000004")
    assert _pretrain(argv) == 0
    assert (run / LATEST).read_text() == "6"
    assert train_losses(metrics) == train_losses(tmp_path / "sync.jsonl")  # bit for bit
    assert_same_checkpoint(sync / "iter_0000006", run / "iter_0000006")


@pytest.mark.slow
def test_torchrun_kill_during_async_save_then_async_resume_is_exact(tmp_path):
    """2 processes (DP=2): both are SIGKILLed right after handing iteration 4's save to its
    writer. The pointer stays on 2 (finalized before 4 was scheduled), iteration 4 has no
    completion files, and the --async-save resume from 2 reproduces the sync run's losses and
    final checkpoint."""
    pretrain = "-m megatron_ponder.pretrain"
    sync, run = tmp_path / "sync", tmp_path / "async"
    run_torchrun(pretrain, 2, TINY + ["--train-iters", "8", "--save", sync, "--metrics-file", tmp_path / "sync.jsonl"])
    metrics = tmp_path / "async.jsonl"
    argv = TINY + ["--train-iters", "8", "--save", run, "--load", run, "--metrics-file", metrics, "--async-save"]
    killed = run_torchrun(pretrain, 2, argv, check=False, env=child_env(PONDER_FAULT_INJECT="async-save-in-flight:4"))
    assert killed.returncode != 0
    assert (run / LATEST).read_text() == "2"
    assert not (run / "iter_0000004" / "metadata.json").exists()

    resumed = run_torchrun(pretrain, 2, argv)
    assert "at iteration 2" in resumed.stdout
    assert (run / LATEST).read_text() == "8"
    assert train_losses(metrics) == train_losses(tmp_path / "sync.jsonl")
    assert_same_checkpoint(sync / "iter_0000008", run / "iter_0000008")
