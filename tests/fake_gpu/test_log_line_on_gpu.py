"""The training log on a (fake) GPU: the line says per GPU, has MFU against the table's peak for
the device name and --bf16 (the fake device is an "H100 80GB": 989.5 TFLOP/s), the CUDA allocator's
memory figures, and logging a step (line, TensorBoard scalars with memory and timers) makes no host
read of a device tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support.fake_gpu_runs import Layout, fake_gpu_run
from tools.fake_gpu import DEVICE_TYPE

pytestmark = pytest.mark.fake_gpu


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: a scalar read (``.item()``,
    ``float(t)``) or a copy from the device to the host."""

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.total += 1
        elif func is torch.ops.aten._to_copy.default:
            self.total += int(args[0].device.type == DEVICE_TYPE and out.device.type == "cpu")
        elif func is torch.ops.aten.copy_.default:
            self.total += int(args[1].device.type == DEVICE_TYPE and args[0].device.type == "cpu")
        return out


def test_log_line_and_scalars_on_a_gpu(tmp_path, capsys):
    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.run_logger import RunLogger
    from megatron_ponder.training.step import train_step

    flags = ["--log-interval", "1", "--tensorboard-dir", str(tmp_path), "--log-memory-to-tensorboard",
             "--log-timers-to-tensorboard"]
    with fake_gpu_run("latent", Layout("single"), flags) as run:
        args = run.args
        logger = RunLogger(args, total_iters=2, start_iteration=0)
        assert "MFU against fake H100 80GB: 989.5 TFLOP/s dense BF16" in capsys.readouterr().out
        stream = run.stream(run.train_set)
        reads = HostReads()
        for iteration in range(2):
            result = train_step(run.chunks, run.optimizer, stream.next_step(), args.micro_batch_size,
                                args.seq_length, iteration)
            flops = step_flops(run.config, args.seq_length, args.global_batch_size, args.vocab_size,
                               result.jacobi_rounds)
            with reads:
                logger.log_step(iteration + 1, result, 1e-3, 0.5, flops, (iteration + 1) * args.global_batch_size)
        logger.close()
    assert reads.total == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iteration")][-1]
    fields = dict(part.split(": ", 1) for part in line.split(" | ") if ": " in part)
    tflops = float(fields["throughput per GPU (TFLOP/s/GPU)"])
    assert tflops == pytest.approx(flops / 0.5 / 1e12, rel=1e-3)
    assert float(fields["MFU"].rstrip("%")) == pytest.approx(100 * tflops / 989.5, abs=0.06)
    assert fields["mem max allocated / reserved (GiB)"] == "0.00 / 0.00"  # the fake device has no allocator
    assert list(tmp_path.glob("events.out.tfevents.*"))
