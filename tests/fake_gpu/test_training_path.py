"""The training entry point's path on a fake GPU, in every mode and in TP, PP, DP and CP layouts.

Loader (host batches) -> ``train_step`` (Megatron's schedules, or the looped pipeline for the
multi-pass modes at PP=2) -> report reduction -> optimizer step -> ``evaluation_step`` ->
``save_checkpoint``, with the model built as on a GPU machine (``model.cuda()``). A device error
anywhere (an op mixing the fake GPU and the CPU, a host tensor in a collective) fails the test.
Values are fake, so only placement and control flow are asserted.
"""

import os

import pytest
import torch

from support.fake_gpu_runs import LAYOUTS, MODES, fake_gpu_run
from tools.fake_gpu import DEVICE_TYPE

pytestmark = pytest.mark.fake_gpu


def _state_tensors(state):
    """(key, tensor) of every ShardedTensor in a dist_checkpointing state dict."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    found = []

    def walk(value):
        if isinstance(value, ShardedTensor):
            found.append((value.key, value.data))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(state)
    return found


def _save_recording_the_state(run, folder, monkeypatch):
    """``save_checkpoint`` of the run, with Megatron's writer replaced by a recorder.

    Why not the real write: a fake tensor has no bytes (torch.save and torch.distributed.checkpoint
    serialise storages, and a FakeTensor's storage has no data), and before writing Megatron
    validates the sharding by gathering every rank's metadata with object collectives, which one
    process posing as one rank cannot answer. Everything before the write (the model's and the
    optimizer's sharded state dicts, the distributed optimizer's state, the generators, the
    folder) and after it (agreement on errors, barrier, the latest pointer) runs for real.
    """
    from megatron_ponder.training.checkpointing import save_load as checkpointing

    written = []
    monkeypatch.setattr(checkpointing.dist_checkpointing, "save", lambda state, where, **strategy: written.append((state, where)))
    run_args = {k: v for k, v in vars(run.args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    saved = checkpointing.save_checkpoint(str(folder), 2, run.model, run.optimizer, run.scheduler, 4, run_args,
                                          run.args.use_distributed_optimizer)
    return saved, written


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("mode", MODES)
def test_train_evaluate_save(mode, layout, tmp_path, monkeypatch):
    with fake_gpu_run(mode, layout) as run:
        assert {p.device.type for p in run.model.parameters()} == {DEVICE_TYPE}  # model.cuda() was taken
        assert not run.config.use_cpu_initialization
        stream = run.stream(run.train_set)
        for iteration in range(2):
            microbatches = stream.next_step()
            assert microbatches and all(t.device.type == "cpu" for b in microbatches for t in b.values()
                                        if isinstance(t, torch.Tensor))  # as the default loader gives them
            result = run_train_step(run, microbatches, iteration)
            assert not result.skipped and result.grad_norm is not None
            if mode == "latent":
                assert result.jacobi_rounds >= 1 and len(result.jacobi_residuals) == result.jacobi_rounds
            else:
                assert result.jacobi_rounds == 0 and result.jacobi_residuals is None
            run.scheduler.step(increment=run.args.global_batch_size)
        evaluation = run_evaluation_step(run)
        assert evaluation.grad_norm is None
        assert any(p.grad is not None or getattr(p, "main_grad", None) is not None for p in run.model.parameters())

        saved, written = _save_recording_the_state(run, tmp_path, monkeypatch)
        assert saved == os.path.join(str(tmp_path), "iter_0000002")
        assert [where for _, where in written] == [saved]
        state = written[0][0]
        assert {"model", "optimizer", "scheduler", "rng_state"} <= set(state)
        # The weights go to the writer from the GPU. (The distributed optimizer's "fully_reshardable"
        # state is gathered to the host on purpose, over Megatron's gloo groups, so it is not asserted.)
        weights = _state_tensors(state["model"])
        assert weights and not [key for key, t in weights if t.device.type != DEVICE_TYPE]
        assert _state_tensors(state["optimizer"])
        if layout.rank == 0:  # rank 0 makes the folder and moves the pointer for all
            assert os.path.isdir(saved)
            with open(os.path.join(str(tmp_path), "latest_checkpointed_iteration.txt")) as pointer:
                assert pointer.read().strip() == "2"
        kinds = {op for op, size in run.gpu.collectives if size > 1}
        if layout.world_size > 1:
            assert kinds, "a layout of several ranks issued no collective"


def run_train_step(run, microbatches, iteration):
    from megatron_ponder.training.step import train_step

    return train_step(run.chunks, run.optimizer, microbatches, run.args.micro_batch_size, run.args.seq_length, iteration)


def run_evaluation_step(run):
    from megatron_ponder.training.step import evaluation_step

    return evaluation_step(run.chunks, run.stream(run.valid_set).next_step(), run.args.micro_batch_size,
                           run.args.seq_length)
