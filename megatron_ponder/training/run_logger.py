"""The training log: one line per ``--log-interval`` steps, evaluations, TensorBoard and W&B.

Printed by global rank 0 (every rank holds the same global loss after the step's all-reduce).
The line and the scalars carry what Megatron-LM's ``training_log`` does, under its names:
iteration, consumed samples, time per iteration, throughput (TFLOP/s per device), learning rate,
global batch size, lm loss, grad norm, skipped and NaN iterations; and beside them tokens/s, MFU
against the device's dense peak (:mod:`megatron_ponder.runtime.peak_flops`; omitted without one,
on CPU by default), memory (:mod:`megatron_ponder.runtime.memory_usage`) and, in latent mode, the
Jacobi residual of each round. Throughput counts every pass: tokens/s are real tokens, TFLOP/s are
the FLOPs of all passes (:mod:`megatron_ponder.training.flops`) per second per process.

TensorBoard (``--tensorboard-dir``, every ``--tensorboard-log-interval`` steps) gets Megatron-LM's
scalars: ``lm loss``, ``learning-rate``, ``batch-size``, ``grad-norm``, each also " vs samples";
``iteration-time`` and ``throughput`` with ``--log-timers-to-tensorboard``; ``mem-*`` with
``--log-memory-to-tensorboard``; ``lm loss validation`` (and its ``ppl`` with
``--log-validation-ppl-to-tensorboard``). W&B (``--wandb-project``) gets the same names, without
the " vs samples" copies, as Megatron-LM logs them. Nothing here synchronises a device inside a
step: the step's figures are Python numbers already, and memory is a host-side query.
"""

from __future__ import annotations

import json
import math
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist

from megatron_ponder.runtime.memory_usage import memory_figures, memory_summary
from megatron_ponder.runtime.peak_flops import model_flops_utilization, peak_tflops_for_run, run_precision
from megatron_ponder.training.grad_norm_watch import GradNormSpikeWatch


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _tensorboard_writer(folder: str):
    """A SummaryWriter on ``folder``, or None (one line) where tensorboard is not installed.

    It is a dependency of the package; only an install without dependencies (``pip install
    --no-deps`` into a container) can lack it.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("--tensorboard-dir: tensorboard is not installed (pip install tensorboard): logging to stdout only",
              flush=True)
        return None
    return SummaryWriter(log_dir=folder)


class RunLogger:
    def __init__(self, args, total_iters: int, start_iteration: int):
        self.args = args
        self.total_iters = total_iters
        self.is_writer = dist.get_rank() == 0
        self.world_size = dist.get_world_size()
        self.cuda = torch.cuda.is_available()
        self.window_time = 0.0
        self.window_steps = 0
        self.window_flops = 0.0
        self.window_loss = 0.0
        self.window_skipped = 0
        self.window_nan = 0
        self.consumed = 0  # the samples consumed at the last logged step (evaluations are logged against it)
        self.started = time.perf_counter()
        self.start_iteration = start_iteration
        self.tensorboard_interval = getattr(args, "tensorboard_log_interval", 1)
        self.log_memory = getattr(args, "log_memory_to_tensorboard", False)
        self.log_timers = getattr(args, "log_timers_to_tensorboard", False)
        self.log_validation_ppl = getattr(args, "log_validation_ppl_to_tensorboard", False)
        self.peak_tflops, peak_source = peak_tflops_for_run(
            getattr(args, "peak_tflops", None), torch.cuda.get_device_name() if self.cuda else None,
            run_precision(getattr(args, "bf16", False), getattr(args, "fp8", None)))
        if self.is_writer and (self.cuda or self.peak_tflops is not None):
            print(f"MFU against {peak_source}" if self.peak_tflops is not None else f"MFU omitted: {peak_source}",
                  flush=True)
        self.grad_norm_watch = GradNormSpikeWatch(args.grad_norm_spike_factor, args.grad_norm_spike_window)
        self.metrics = open(args.metrics_file, "a") if args.metrics_file and self.is_writer else None
        self.tensorboard = _tensorboard_writer(args.tensorboard_dir) if args.tensorboard_dir and self.is_writer \
            else None

        self.wandb = None
        if getattr(args, "wandb_project", None) and self.is_writer:
            import wandb

            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name, dir=args.wandb_save_dir,
                                    config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    def log_step(self, iteration: int, result, learning_rate: float, seconds: float, flops: float, consumed: int):
        self.consumed = consumed
        self.window_time += seconds
        self.window_steps += 1
        self.window_flops += flops
        self.window_skipped += int(result.skipped)
        self.window_nan += int(result.skipped and not math.isfinite(result.loss))
        if not result.skipped:
            self.window_loss += result.loss
        self._write_metrics(kind="train", iteration=iteration, loss=result.loss, grad_norm=result.grad_norm,
                            lr=learning_rate, skipped=result.skipped, consumed_samples=consumed,
                            step_seconds=seconds, flops=flops,
                            jacobi_residuals=list(result.jacobi_residuals or []))
        spike = self.grad_norm_watch.check(iteration, result.grad_norm)
        if spike and self.is_writer:
            print(spike, flush=True)
        if iteration % self.tensorboard_interval == 0:
            self._write_step_scalars(iteration, result, learning_rate)
        if iteration % self.args.log_interval != 0 and iteration != self.total_iters:
            return
        self._print_line(iteration, result, learning_rate)
        self.window_time = self.window_flops = self.window_loss = 0.0
        self.window_steps = self.window_skipped = self.window_nan = 0

    def _write_step_scalars(self, iteration: int, result, learning_rate: float):
        """Megatron-LM's per-step scalars (and " vs samples"), the Jacobi residuals, memory."""
        by_samples = {"learning-rate": learning_rate, "batch-size": self.args.global_batch_size,
                      "lm loss": result.loss}
        if result.grad_norm is not None:
            by_samples["grad-norm"] = result.grad_norm
        plain = {f"jacobi-residual/round-{k}": r for k, r in enumerate(result.jacobi_residuals or [], start=1)}
        if self.log_memory:
            plain.update(memory_figures(self.cuda))
        self._write_scalars(iteration, by_samples, plain, wandb_extra={"samples vs steps": self.consumed})

    def _print_line(self, iteration: int, result, learning_rate: float):
        steps = self.window_steps
        counted = steps - self.window_skipped
        loss = self.window_loss / counted if counted else float("nan")
        step_time = self.window_time / steps
        tokens_per_second = self.args.global_batch_size * self.args.seq_length / step_time
        tflops = self.window_flops / self.window_time / self.world_size / 1e12
        mfu = model_flops_utilization(tflops, self.peak_tflops)
        elapsed = time.perf_counter() - self.started
        done = iteration - self.start_iteration
        eta = elapsed / max(done, 1) * (self.total_iters - iteration)
        per = "GPU" if self.cuda else "process"
        parts = [
            f"iteration {iteration:6d}/{self.total_iters}",
            f"consumed samples: {self.consumed}",
            f"elapsed time per iteration (ms): {1000 * step_time:.1f}",
            f"tokens/s: {tokens_per_second:,.0f}",
            f"throughput per {per} (TFLOP/s/{per}): {tflops:.4g}",
        ]
        if mfu is not None:
            parts.append(f"MFU: {100 * mfu:.1f}%")
        parts += [
            f"learning rate: {learning_rate:.6E}",
            f"global batch size: {self.args.global_batch_size}",
            f"lm loss: {loss:.6E}",
            f"ppl: {math.exp(min(loss, 50)):.2f}" if counted else "ppl: nan",
            f"grad norm: {result.grad_norm:.3f}" if result.grad_norm is not None else "grad norm: -",
            f"number of skipped iterations: {self.window_skipped}",
            f"number of nan iterations: {self.window_nan}",
        ]
        if result.jacobi_residuals:
            parts.append("jacobi residual per round: " + " ".join(f"{r:.1e}" for r in result.jacobi_residuals))
        memory = memory_figures(self.cuda)
        parts.append(memory_summary(memory))
        parts.append(f"ETA {_format_eta(eta)}")
        if self.is_writer:
            print(" | ".join(parts), flush=True)
        if self.log_timers:
            timers = {"iteration-time": step_time, "throughput": tflops, "tokens-per-second": tokens_per_second}
            if mfu is not None:
                timers["mfu-percent"] = 100 * mfu
            self._write_scalars(iteration, {}, timers)

    def _write_scalars(self, iteration: int, by_samples: Dict[str, float], plain: Dict[str, float],
                       wandb_extra: Optional[Dict[str, float]] = None):
        """TensorBoard: each of ``by_samples`` at the iteration and, as "<name> vs samples", at the
        consumed samples (Megatron-LM's pairs); ``plain`` at the iteration only. W&B: all, by name."""
        if self.tensorboard:
            for name, value in by_samples.items():
                self.tensorboard.add_scalar(name, value, iteration)
                self.tensorboard.add_scalar(f"{name} vs samples", value, self.consumed)
            for name, value in plain.items():
                self.tensorboard.add_scalar(name, value, iteration)
        if self.wandb:
            self.wandb.log({**(wandb_extra or {}), **by_samples, **plain}, step=iteration)

    def _write_metrics(self, **record):
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def log_evaluation(self, iteration: int, loss: float, jacobi_rounds: Optional[float] = None):
        """``jacobi_rounds``: latent mode, the mean Jacobi rounds per microbatch (``--jacobi-eval-tol``)."""
        rounds = {} if jacobi_rounds is None else dict(jacobi_rounds=jacobi_rounds)
        self._write_metrics(kind="valid", iteration=iteration, loss=loss, **rounds)
        ppl = math.exp(min(loss, 50))
        if self.is_writer:
            print(f"validation loss at iteration {iteration} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E}"
                  + ("" if jacobi_rounds is None else f" | jacobi rounds {jacobi_rounds:.2f}"), flush=True)
        scalars = {"lm loss validation": loss}
        if self.log_validation_ppl:
            scalars["lm loss validation ppl"] = ppl
        self._write_scalars(iteration, scalars, {})

    def close(self):
        if self.wandb:
            self.wandb.finish()
        if self.metrics:
            self.metrics.close()
        if self.tensorboard:
            self.tensorboard.close()
