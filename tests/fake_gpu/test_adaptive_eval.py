"""Adaptive Jacobi rounds (``--jacobi-eval-tol``) on the fake GPU, single, TP=2 and CP=2 layouts.

The stop rule's residual sums live on the device of the thoughts and its all-reduce goes over
the tensor- and context-parallel groups with device tensors (the harness fails otherwise); the
rule runs in evaluation only: a training step with the flag set reads nothing more from the
device than one without it, and never calls the rule. (Values are fake: the residual reads as 0,
so every microbatch stops after its first round; only placement and control flow are asserted.)
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support.fake_gpu_runs import LAYOUTS, fake_gpu_run

pytestmark = pytest.mark.fake_gpu


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (``.item()``, ``.tolist()``, ``bool(t)``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _train_step_and_evaluation(run, monkeypatch):
    """(host reads of one training step, stop-rule calls in it, stop-rule calls in an evaluation)."""
    from megatron_ponder.model import ponder_gpt
    from megatron_ponder.training.step import evaluation_step, train_step

    calls = []
    rule = ponder_gpt.residual_below
    monkeypatch.setattr(ponder_gpt, "residual_below", lambda *a, **k: calls.append(a[0].device) or rule(*a, **k))
    with HostReads() as reads:
        train_step(run.chunks, run.optimizer, run.stream(run.train_set).next_step(), run.args.micro_batch_size,
                   run.args.seq_length, 0)
    in_training = len(calls)
    evaluation = evaluation_step(run.chunks, run.stream(run.valid_set).next_step(), run.args.micro_batch_size,
                                 run.args.seq_length)
    return reads.count, in_training, calls[in_training:], evaluation


@pytest.mark.parametrize("layout", [l for l in LAYOUTS if l.name in ("single", "tp2", "cp2")],
                         ids=lambda layout: layout.name)
def test_adaptive_evaluation_on_the_device_and_never_in_training(layout, monkeypatch):
    with fake_gpu_run("latent", layout) as run:
        plain_reads, _, plain_eval_calls, _ = _train_step_and_evaluation(run, monkeypatch)
    with fake_gpu_run("latent", layout, ["--jacobi-eval-tol", "1e-3"]) as run:
        assert run.config.jacobi_eval_tol == 1e-3
        reads, training_calls, eval_calls, evaluation = _train_step_and_evaluation(run, monkeypatch)
        tp_cp = {op for op, size in run.gpu.collectives if size == layout.tp * layout.cp}
    assert plain_eval_calls == [] and training_calls == 0
    assert plain_reads > 0  # the count sees the step's own reads (loss report, finite check)
    assert reads == plain_reads, "the flag added host reads to the training step"
    # Every microbatch of the evaluation ran the rule on the thoughts, on the fake GPU.
    microbatches = run.args.global_batch_size // run.args.micro_batch_size // layout.dp
    assert len(eval_calls) == microbatches and {d.type for d in eval_calls} == {"fakegpu"}
    assert evaluation.mean_jacobi_rounds is not None
    if layout.world_size > 1:
        assert tp_cp, "the stop rule's all-reduce over the thought shards' group did not run"
