"""The grad-norm spike warning: once per step above factor x the running median, never otherwise."""

import math
from types import SimpleNamespace

from megatron_ponder.training.grad_norm_watch import MIN_HISTORY, GradNormSpikeWatch
from megatron_ponder.training.run_logger import RunLogger


def test_a_spike_above_the_factor_warns_with_its_numbers():
    watch = GradNormSpikeWatch(factor=5.0, window=100)
    assert all(watch.check(i, 0.5 + 0.01 * (i % 3)) is None for i in range(1, 61))
    line = watch.check(61, 7.6)
    assert line.startswith("warning: iteration 61: grad norm 7.6 is 14.9x the median 0.51 of the last 60 steps")
    assert "--grad-norm-spike-factor 5" in line and "\n" not in line


def test_steady_or_falling_norms_and_jumps_below_the_factor_never_warn():
    watch = GradNormSpikeWatch(factor=5.0)
    falling = [10.0 / math.sqrt(i) for i in range(1, 200)]  # the usual early-training shape
    assert [watch.check(i, g) for i, g in enumerate(falling)] == [None] * len(falling)
    assert watch.check(200, 4.9 * 10.0 / math.sqrt(150)) is None


def test_the_median_needs_history_and_the_window_forgets():
    watch = GradNormSpikeWatch(factor=2.0, window=MIN_HISTORY)
    assert all(watch.check(i, 1.0) is None for i in range(MIN_HISTORY - 1))
    assert watch.check(MIN_HISTORY, 100.0) is None  # too little history yet: no verdict
    watch = GradNormSpikeWatch(factor=2.0, window=MIN_HISTORY)
    for i in range(MIN_HISTORY):
        watch.check(i, 1.0)
    for i in range(MIN_HISTORY):
        watch.check(100 + i, 10.0)  # a higher plateau replaces the old window
    assert watch.check(200, 15.0) is None and watch.check(201, 25.0) is not None


def test_factor_zero_and_skipped_steps_are_ignored():
    watch = GradNormSpikeWatch(factor=0.0)
    assert all(watch.check(i, 1.0 if i < 50 else 1e6) is None for i in range(60))
    watch = GradNormSpikeWatch(factor=3.0)
    for i in range(MIN_HISTORY):
        watch.check(i, 1.0)
    assert watch.check(100, None) is None and watch.check(101, float("nan")) is None
    assert len(watch.history) == MIN_HISTORY


def test_the_training_log_prints_the_warning_line(megatron_world_of_one, capsys):
    args = SimpleNamespace(metrics_file=None, tensorboard_dir=None, wandb_project=None, log_interval=1000,
                           global_batch_size=1, seq_length=1, grad_norm_spike_factor=5.0, grad_norm_spike_window=100)
    logger = RunLogger(args, total_iters=10_000, start_iteration=0)
    for i in range(1, 81):
        step = SimpleNamespace(loss=1.0, grad_norm=8.0 if i == 80 else 1.0, skipped=False, jacobi_residuals=None)
        logger.log_step(i, step, learning_rate=1e-3, seconds=0.1, flops=1.0, consumed=i)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: iteration 80: grad norm 8 is 8.0x the median 1")
