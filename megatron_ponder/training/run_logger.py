"""The training log: one line per ``--log-interval`` steps, evaluations, TensorBoard if installed.

Printed by global rank 0 (every rank holds the same global loss after the step's all-reduce).
Throughput counts every pass: tokens/s are real tokens, TFLOP/s are the FLOPs of all passes
(:mod:`megatron_ponder.training.flops`) per second per process.
"""

from __future__ import annotations

import json
import math
import time

import torch.distributed as dist

from megatron_ponder.training.grad_norm_watch import GradNormSpikeWatch


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLogger:
    def __init__(self, args, total_iters: int, start_iteration: int):
        self.args = args
        self.total_iters = total_iters
        self.is_writer = dist.get_rank() == 0
        self.world_size = dist.get_world_size()
        self.window_time = 0.0
        self.window_steps = 0
        self.window_flops = 0.0
        self.window_loss = 0.0
        self.window_skipped = 0
        self.started = time.perf_counter()
        self.start_iteration = start_iteration
        self.grad_norm_watch = GradNormSpikeWatch(args.grad_norm_spike_factor, args.grad_norm_spike_window)
        self.metrics = open(args.metrics_file, "a") if args.metrics_file and self.is_writer else None
        self.tensorboard = None
        if args.tensorboard_dir and self.is_writer:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(log_dir=args.tensorboard_dir)
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard): logging to stdout only", flush=True)

        self.wandb = None
        if getattr(args, "wandb_project", None) and self.is_writer:
            import wandb

            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name, dir=args.wandb_save_dir,
                                    config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    def log_step(self, iteration: int, result, learning_rate: float, seconds: float, flops: float, consumed: int):
        self.window_time += seconds
        self.window_steps += 1
        self.window_flops += flops
        self.window_skipped += int(result.skipped)
        if not result.skipped:
            self.window_loss += result.loss
        self._write_metrics(kind="train", iteration=iteration, loss=result.loss, grad_norm=result.grad_norm,
                            lr=learning_rate, skipped=result.skipped, consumed_samples=consumed,
                            step_seconds=seconds, flops=flops,
                            jacobi_residuals=list(result.jacobi_residuals or []))
        spike = self.grad_norm_watch.check(iteration, result.grad_norm)
        if spike and self.is_writer:
            print(spike, flush=True)
        if self.tensorboard:
            self.tensorboard.add_scalar("train/loss", result.loss, iteration)
            self.tensorboard.add_scalar("train/learning_rate", learning_rate, iteration)
            if result.grad_norm is not None:
                self.tensorboard.add_scalar("train/grad_norm", result.grad_norm, iteration)
        if iteration % self.args.log_interval != 0 and iteration != self.total_iters:
            return
        steps = self.window_steps
        counted = steps - self.window_skipped
        loss = self.window_loss / counted if counted else float("nan")
        step_time = self.window_time / steps
        tokens_per_second = self.args.global_batch_size * self.args.seq_length / step_time
        tflops = self.window_flops / self.window_time / self.world_size / 1e12
        elapsed = time.perf_counter() - self.started
        done = iteration - self.start_iteration
        eta = elapsed / max(done, 1) * (self.total_iters - iteration)
        parts = [
            f"iteration {iteration:6d}/{self.total_iters}",
            f"consumed samples {consumed}",
            f"step {1000 * step_time:.1f} ms",
            f"lr {learning_rate:.3e}",
            f"loss {loss:.4f}",
            f"ppl {math.exp(min(loss, 50)):.2f}" if counted else "ppl nan",
            f"grad norm {result.grad_norm:.3f}" if result.grad_norm is not None else "grad norm -",
            f"tokens/s {tokens_per_second:,.0f}",
            f"TFLOP/s/proc {tflops:.4f}",
        ]
        if result.jacobi_residuals:
            parts.append("jacobi residual " + " ".join(f"{r:.1e}" for r in result.jacobi_residuals))
        if self.window_skipped:
            parts.append(f"skipped {self.window_skipped} (non-finite loss)")
        parts.append(f"ETA {_format_eta(eta)}")
        if self.is_writer:
            print(" | ".join(parts), flush=True)
        self.window_time = self.window_flops = self.window_loss = 0.0
        self.window_steps = self.window_skipped = 0

    def _write_metrics(self, **record):
        if self.wandb:
            kind = record["kind"]
            self.wandb.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float))
                            and k not in ("kind", "iteration")}, step=record["iteration"])
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def log_evaluation(self, iteration: int, loss: float):
        self._write_metrics(kind="valid", iteration=iteration, loss=loss)
        if self.is_writer:
            print(f"validation at iteration {iteration} | loss {loss:.4f} | ppl {math.exp(min(loss, 50)):.2f}", flush=True)
        if self.tensorboard:
            self.tensorboard.add_scalar("valid/loss", loss, iteration)

    def close(self):
        if self.wandb:
            self.wandb.finish()
        if self.metrics:
            self.metrics.close()
        if self.tensorboard:
            self.tensorboard.close()
