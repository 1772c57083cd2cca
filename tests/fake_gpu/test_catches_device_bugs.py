"""The harness fails where a GPU run would: the two device bugs the step had, put back in a scratch
copy, each raise under the fake GPU (the step with the fixes passes: test_training_path.py)."""

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

from support.fake_gpu_runs import LAYOUTS, Layout, fake_gpu_run
from tools.fake_gpu import CollectiveDeviceError

pytestmark = pytest.mark.fake_gpu

DEVICE_ERRORS = (FakeTensorDeviceMismatchError, CollectiveDeviceError)


def _old_reduce_reports(reports, num_rounds):
    """``training/step.py`` ``_reduce_reports`` before the fix: host float64 sums of device reports,
    all-reduced over groups that are NCCL on a GPU."""
    from megatron.core import parallel_state

    total = torch.zeros(2 + num_rounds, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss = torch.zeros(2, dtype=torch.float64)
        for report in reports:
            loss += report["lm loss"].double()
        dist.all_reduce(loss, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        total[:2] = loss
        if num_rounds and reports:
            total[2:] = reports[-1]["jacobi residual"].double()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, count = total[:2].tolist()
    return loss_sum / max(count, 1.0), int(count), total[2:].tolist()


def _one_train_step(run):
    from megatron_ponder.training.step import train_step

    return train_step(run.chunks, run.optimizer, run.stream(run.train_set).next_step(), run.args.micro_batch_size,
                      run.args.seq_length, 0)


@pytest.mark.parametrize("layout", [LAYOUTS[0], Layout("pp2-first", pp=2, rank=0)], ids=lambda layout: layout.name)
def test_host_report_reduction_is_caught(layout, monkeypatch):
    """Last stage: the host sum meets a device report; first stage (PP=2): a host tensor goes into
    the pipeline all-reduce without meeting any device tensor, which only the collective check sees."""
    from megatron_ponder.training import step

    monkeypatch.setattr(step, "_reduce_reports", _old_reduce_reports)
    with fake_gpu_run("ponder", layout) as run:
        with pytest.raises(DEVICE_ERRORS) as caught:
            _one_train_step(run)
    expected = FakeTensorDeviceMismatchError if layout.pp == 1 else CollectiveDeviceError
    assert isinstance(caught.value, expected)


@pytest.mark.parametrize("mode", ["none", "latent"])
def test_batches_left_on_the_host_are_caught(mode, monkeypatch):
    """``forward_step`` without its move to the device: the loader's host batch meets the model."""
    from megatron_ponder.training import step

    monkeypatch.setattr(step, "batch_to_device", lambda batch, device=None: batch)
    with fake_gpu_run(mode, LAYOUTS[0]) as run:
        with pytest.raises(FakeTensorDeviceMismatchError, match="cpu"):
            _one_train_step(run)
