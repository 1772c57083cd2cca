"""One training (or evaluation) step through Megatron-Core's pipeline schedules.

The loss is Megatron's per-token form: each microbatch returns (sum of token losses, token
count) and ``finalize_model_grads`` divides the gradients by the token count of the whole global
batch (all microbatches, data- and context-parallel ranks). The result is the exact mean over the
global batch whatever the layout, which is what lets every parallel layout reproduce the
single-process run.

A batch is a dict of [b, L] tensors: ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` and
optionally ``attention_mask`` ([b|1, 1, L, L], True = masked; None means causal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_ponder.model.passes import plan_for_config
from megatron_ponder.parallel.context_parallel import split_batch_for_context_parallel
from megatron_ponder.parallel.looped_pipeline import looped_forward_backward
from megatron_ponder.runtime.device import batch_to_device, compute_device
from megatron_ponder.training.grad_overlap import overlapped_grad_reduce
from megatron_ponder.training.nan_guard import NonFiniteLossError, gradients_are_finite


def masked_token_loss(loss_mask: Tensor, output) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Megatron's 3-tuple loss: (sum of masked token losses, token count, report).

    Args:
        loss_mask: [b, L] 1 where the token counts.
        output: the model's output with labels: the per-token loss [b, L], or
            (per-token loss, Jacobi residuals [J]) in latent mode.

    Returns:
        loss sum (scalar, differentiable), token count (int scalar), and the report for logging
        (detached): ``{"lm loss": [sum, count]}``, plus ``"jacobi residual": [J]`` in latent mode.
    """
    per_token_loss, residuals = output if isinstance(output, tuple) else (output, None)
    mask = loss_mask.float()
    loss_sum = (per_token_loss.float() * mask).sum()
    count = mask.sum()
    report = {"lm loss": torch.stack([loss_sum.detach(), count])}
    if residuals is not None:
        report["jacobi residual"] = residuals
    return loss_sum, count.to(torch.int), report


def forward_step(
    data_iterator: Iterator[Dict[str, Tensor]], model: torch.nn.Module, num_jacobi_rounds: Optional[int] = None,
    jacobi_tol: float = 0.0,
):
    """Megatron ``forward_step_func``: this rank's CP slice of the next microbatch through the model.

    The loader's batches are on the host (the DALI loader's may already be on the GPU); each
    microbatch moves to the rank's device here, one at a time, as Megatron-LM's ``get_batch``
    does. ``num_jacobi_rounds``: latent mode's J for this step (bound with ``functools.partial``);
    the model then also returns the Jacobi residuals, which go into the loss report.
    ``jacobi_tol`` > 0 (evaluation only): adaptive rounds, at most ``num_jacobi_rounds``.
    """
    batch = split_batch_for_context_parallel(batch_to_device(next(data_iterator)))
    latent = {} if num_jacobi_rounds is None else dict(num_jacobi_rounds=num_jacobi_rounds, return_jacobi_residuals=True)
    if jacobi_tol > 0:
        latent["jacobi_tol"] = jacobi_tol
    output = model(
        batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"], **latent
    )
    return output, partial(masked_token_loss, batch["loss_mask"])


@dataclass
class StepResult:
    """What a step reports (identical on every rank)."""

    loss: float  # mean token loss over the global batch
    tokens: int  # tokens that counted, whole global batch
    grad_norm: Optional[float] = None
    skipped: bool = False  # optimizer skipped the update (e.g. inf/nan gradients)
    jacobi_rounds: int = 0  # latent mode: J of this step (0 in the other modes)
    # Latent mode: per round, the residual of the last microbatch as measured by the last
    # pipeline stage of this rank's pipeline (on its data/context/tensor shard).
    jacobi_residuals: Optional[List[float]] = None
    # Evaluation in latent mode: the Jacobi rounds run per microbatch, mean over the microbatches
    # of every data-parallel rank (below jacobi_rounds when --jacobi-eval-tol stops them early).
    mean_jacobi_rounds: Optional[float] = None


def _reduce_reports(reports: List[Dict[str, Tensor]], num_rounds: int) -> Tuple[float, int, List[float]]:
    """(mean loss, token count, Jacobi residuals) of the step, on every rank.

    Sums [loss_sum, count] over microbatches and data/context-parallel ranks, takes the last
    microbatch's residuals, and shares both from the last pipeline stage with the other stages.
    The sums live on the rank's device, where the reports are and where NCCL reduces; the one
    host copy is the final ``tolist``.
    """
    device = compute_device()
    total = torch.zeros(2 + num_rounds, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss = torch.zeros(2, dtype=torch.float64, device=device)
        for report in reports:
            loss += report["lm loss"].to(device=device, dtype=torch.float64)
        dist.all_reduce(loss, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        total[:2] = loss
        if num_rounds and reports:
            residuals = reports[-1]["jacobi residual"]  # fewer than J after adaptive rounds stopped
            total[2:2 + residuals.numel()] = residuals.to(device=device, dtype=torch.float64)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, count = total[:2].tolist()
    return loss_sum / max(count, 1.0), int(count), total[2:].tolist()


def forward_backward(
    model_chunks: List[torch.nn.Module],
    microbatches: List[Dict[str, Tensor]],
    micro_batch_size: int,
    seq_length: int,
    forward_only: bool,
    num_jacobi_rounds: Optional[int] = None,
    jacobi_tol: float = 0.0,
) -> List[Dict[str, Tensor]]:
    """Run Megatron's schedule for this layout; returns the loss reports of the last stage.

    Multi-pass modes under pipeline parallelism loop around the pipeline ring
    (:mod:`megatron_ponder.parallel.looped_pipeline`); everything else is Megatron's own
    schedule (no pipelining, or 1F1B for mode ``none``). ``num_jacobi_rounds``: latent mode's J
    (None in the other modes); ``jacobi_tol``: adaptive rounds (evaluation, no pipeline).
    """
    step = partial(forward_step, num_jacobi_rounds=num_jacobi_rounds, jacobi_tol=jacobi_tol)
    mode = get_model_config(model_chunks[0]).ponder_mode
    if parallel_state.get_pipeline_model_parallel_world_size() > 1 and mode != "none":
        if jacobi_tol > 0:
            raise ValueError("adaptive Jacobi rounds (--jacobi-eval-tol > 0) need pipeline size 1: the looped "
                             "pipeline fixes the passes before its schedule; pass --jacobi-eval-tol 0")
        if len(model_chunks) != 1:
            raise ValueError("multi-pass modes use the passes as virtual stages: build one model chunk")
        return looped_forward_backward(
            step, model_chunks[0], microbatches, micro_batch_size, seq_length, forward_only,
            num_jacobi_rounds=num_jacobi_rounds or 0,
        )
    return get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iter(microbatches),
        model=model_chunks,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _step_rounds(config, iteration: Optional[int]) -> Optional[int]:
    """Latent mode's J: the iteration's draw when training, ``jacobi_eval_rounds`` for evaluation."""
    if config.ponder_mode != "latent":
        return None
    return config.jacobi_eval_rounds if iteration is None else config.jacobi_rounds_for_iteration(iteration)


def train_step(
    model_chunks: List[torch.nn.Module],
    optimizer,
    microbatches: List[Dict[str, Tensor]],
    micro_batch_size: int,
    seq_length: int,
    iteration: int,
    nan_policy: str = "stop",
) -> StepResult:
    """Forward and backward over the step's microbatches, then one optimizer step.

    Latent mode draws J once here (``config.jacobi_rounds_for_iteration(iteration)``) and runs
    every microbatch and pipeline rank with it.
    A non-finite loss or gradient (the same verdict on every rank) raises :class:`NonFiniteLossError` with
    ``nan_policy="stop"``; with ``"skip"`` the update is dropped and the step reported skipped.
    """
    config = get_model_config(model_chunks[0])
    rounds = _step_rounds(config, iteration)
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    with overlapped_grad_reduce(model_chunks, len(plan_for_config(config, rounds or 0))):
        reports = forward_backward(model_chunks, microbatches, micro_batch_size, seq_length, False, rounds)
    loss, tokens, residuals = _reduce_reports(reports, rounds or 0)
    common = dict(loss=loss, tokens=tokens, jacobi_rounds=rounds or 0, jacobi_residuals=residuals or None)
    problem = f"loss is {loss}" if not math.isfinite(loss) else None
    if problem is None and not gradients_are_finite(model_chunks):
        problem = f"loss is {loss} but the gradients are not finite"
    if problem is not None:
        if nan_policy == "stop":  # iteration + 1: the number the log gives this step
            raise NonFiniteLossError(
                f"{problem} at iteration {iteration + 1}: lower --lr, check the data, or pass "
                "--nan-policy skip to drop such steps"
            )
        return StepResult(**common, skipped=True)
    success, grad_norm, _ = optimizer.step()
    return StepResult(**common, grad_norm=None if grad_norm is None else float(grad_norm), skipped=not success)


@torch.no_grad()
def evaluation_step(
    model_chunks: List[torch.nn.Module],
    microbatches: List[Dict[str, Tensor]],
    micro_batch_size: int,
    seq_length: int,
) -> StepResult:
    """Forward only, in eval mode (latent mode: J = ``jacobi_eval_rounds``, or fewer per microbatch
    with ``jacobi_eval_tol`` > 0: adaptive rounds, reported as ``mean_jacobi_rounds``)."""
    config = get_model_config(model_chunks[0])
    rounds = _step_rounds(config, None)
    tolerance = config.jacobi_eval_tol if rounds is not None else 0.0
    for chunk in model_chunks:
        chunk.eval()
    try:
        reports = forward_backward(model_chunks, microbatches, micro_batch_size, seq_length, True, rounds,
                                   jacobi_tol=tolerance)
    finally:
        for chunk in model_chunks:
            chunk.train()
    loss, tokens, residuals = _reduce_reports(reports, rounds or 0)
    return StepResult(loss=loss, tokens=tokens, jacobi_rounds=rounds or 0, jacobi_residuals=residuals or None,
                      mean_jacobi_rounds=None if rounds is None else _mean_jacobi_rounds(reports))


def _mean_jacobi_rounds(reports: List[Dict[str, Tensor]]) -> float:
    """Mean Jacobi rounds run per microbatch of an evaluation step, over every data-parallel rank.

    A microbatch's residual report has one entry per round it ran. Context-parallel ranks of a
    microbatch ran the same rounds, so summing over them scales both sums alike. The counts are
    host numbers; they go through the device for the collectives (evaluation only: one more
    all-reduce and host read per step, none in training).
    """
    device = compute_device()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [rounds run, microbatches]
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        total[0].fill_(sum(report["jacobi residual"].numel() for report in reports))
        total[1].fill_(len(reports))
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    rounds, microbatches = total.tolist()
    return rounds / max(microbatches, 1.0)
