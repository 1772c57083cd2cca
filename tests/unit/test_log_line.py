"""The training log line's fields, the peak TFLOP/s table behind its MFU, and the memory figures.

MFU = achieved TFLOP/s per device / the device's dense peak; without a peak (a CPU, an unknown
GPU, an fp32 run) the line has no MFU at all rather than 0.
"""

import math
import re
from types import SimpleNamespace

import pytest

from megatron_ponder.runtime import memory_usage
from megatron_ponder.runtime.memory_usage import memory_figures, memory_summary, peak_rss_bytes
from megatron_ponder.runtime.peak_flops import (
    known_peak_tflops,
    model_flops_utilization,
    peak_tflops_for_run,
    run_precision,
)
from megatron_ponder.training.run_logger import RunLogger


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5),  # the SXM board
    ("NVIDIA H100 80GB HBM3", "fp8", 1979.0),
    ("NVIDIA H100 PCIe", "bf16", 756.5),  # not the SXM figure its name contains
    ("NVIDIA H100 NVL", "fp8", 1670.5),
    ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "fp8", None),  # no FP8 tensor cores
    ("NVIDIA H100 80GB HBM3", "fp32", None),  # no tensor-core peak applies to an fp32 run
    ("NVIDIA GeForce RTX 4090", "bf16", None),
])
def test_the_peak_table(name, precision, peak):
    assert known_peak_tflops(name, precision) == peak


def test_the_peak_of_a_run_and_the_mfu_arithmetic():
    assert run_precision(bf16=True, fp8="hybrid") == "fp8" and run_precision(True, None) == "bf16"
    assert run_precision(False, None) == "fp32"
    assert peak_tflops_for_run(None, "NVIDIA H200", "bf16")[0] == 989.5
    assert peak_tflops_for_run(500.0, "NVIDIA H200", "bf16") == (500.0, "--peak-tflops 500")  # the flag wins
    peak, why = peak_tflops_for_run(None, None, "bf16")  # CPU
    assert peak is None and "CPU" in why and "--peak-tflops" in why
    assert model_flops_utilization(494.75, 989.5) == pytest.approx(0.5)
    assert model_flops_utilization(494.75, None) is None


def test_memory_figures_on_cpu_and_on_cuda(monkeypatch):
    figures = memory_figures(cuda=False)
    assert figures == {"mem-max-rss-bytes": peak_rss_bytes()} and figures["mem-max-rss-bytes"] > 10 * 2**20
    assert re.fullmatch(r"peak RSS \(GiB\): \d+\.\d\d", memory_summary(figures))
    stats = {"reserved_bytes.all.current": 6 * 2**30, "allocated_bytes.all.current": 2**30,
             "allocated_bytes.all.peak": 3 * 2**30, "reserved_bytes.all.peak": 8 * 2**30, "allocation.all.current": 7}
    monkeypatch.setattr(memory_usage.torch.cuda, "memory_stats", lambda: stats)
    figures = memory_figures(cuda=True)
    assert figures == {"mem-reserved-bytes": 6 * 2**30, "mem-allocated-bytes": 2**30,
                       "mem-max-allocated-bytes": 3 * 2**30, "mem-max-reserved-bytes": 8 * 2**30,
                       "mem-allocated-count": 7}
    assert memory_summary(figures) == "mem max allocated / reserved (GiB): 3.00 / 8.00"


def _args(**overrides):
    args = dict(metrics_file=None, tensorboard_dir=None, wandb_project=None, log_interval=2, global_batch_size=4,
                seq_length=8, grad_norm_spike_factor=0.0, grad_norm_spike_window=100, peak_tflops=None)
    return SimpleNamespace(**{**args, **overrides})


def _fields(line):
    """{field name: value} of a log line ("name: value | ..."; the iteration and ETA have no colon)."""
    return dict(part.split(": ", 1) for part in line.split(" | ") if ": " in part)


def _log_two_steps(args, capsys, second):
    logger = RunLogger(args, total_iters=10, start_iteration=0)
    capsys.readouterr()
    first = SimpleNamespace(loss=2.0, grad_norm=1.5, skipped=False, jacobi_residuals=[3e-2, 4e-3])
    logger.log_step(1, first, learning_rate=1e-3, seconds=0.5, flops=2e12, consumed=4)
    logger.log_step(2, second, learning_rate=2e-3, seconds=1.5, flops=6e12, consumed=8)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iteration")]
    assert len(lines) == 1
    return lines[0]


def test_the_log_line_fields(megatron_world_of_one, capsys):
    second = SimpleNamespace(loss=4.0, grad_norm=2.25, skipped=False, jacobi_residuals=[5e-2, 6e-3, 7e-4])
    line = _log_two_steps(_args(peak_tflops=8.0), capsys, second)
    assert line.startswith("iteration      2/10 | ")
    fields = _fields(line)
    # Means over the window of two steps: 2 s, 8 TFLOP, 8 samples of 8 tokens.
    assert fields["consumed samples"] == "8"
    assert fields["elapsed time per iteration (ms)"] == "1000.0"
    assert fields["tokens/s"] == "32"
    assert float(fields["throughput per process (TFLOP/s/process)"]) == 4.0  # 8e12 FLOPs / 2 s, one process
    assert fields["MFU"] == "50.0%"  # 4 of the 8 TFLOP/s --peak-tflops gives
    assert float(fields["learning rate"]) == 2e-3 and fields["global batch size"] == "4"
    assert float(fields["lm loss"]) == 3.0 and fields["grad norm"] == "2.250"
    assert fields["number of skipped iterations"] == "0" and fields["number of nan iterations"] == "0"
    assert fields["jacobi residual per round"] == "5.0e-02 6.0e-03 7.0e-04"  # the last step's J = 3 rounds
    assert float(fields["peak RSS (GiB)"]) > 0


def test_no_mfu_without_a_peak_and_skipped_nan_steps_are_counted(megatron_world_of_one, capsys):
    second = SimpleNamespace(loss=math.nan, grad_norm=None, skipped=True, jacobi_residuals=None)
    fields = _fields(_log_two_steps(_args(), capsys, second))
    assert "MFU" not in fields  # a CPU has no peak: omitted, not 0
    assert float(fields["lm loss"]) == 2.0  # the skipped step's NaN does not count
    assert fields["number of skipped iterations"] == "1" and fields["number of nan iterations"] == "1"
    assert fields["grad norm"] == "-" and "jacobi residual per round" not in fields
