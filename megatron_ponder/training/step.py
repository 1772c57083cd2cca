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

from megatron_ponder.model.wrappers import unwrap_model
from megatron_ponder.parallel.context_parallel import split_batch_for_context_parallel
from megatron_ponder.parallel.looped_pipeline import looped_forward_backward
from megatron_ponder.training.nan_guard import gradients_are_finite


def masked_token_loss(loss_mask: Tensor, per_token_loss: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Megatron's 3-tuple loss: (sum of masked token losses, token count, report).

    Args:
        loss_mask: [b, L] 1 where the token counts.
        per_token_loss: [b, L] the model's output with labels.

    Returns:
        loss sum (scalar, differentiable), token count (int scalar), and
        ``{"lm loss": [sum, count]}`` (detached) for logging.
    """
    mask = loss_mask.float()
    loss_sum = (per_token_loss.float() * mask).sum()
    count = mask.sum()
    return loss_sum, count.to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), count])}


def forward_step(data_iterator: Iterator[Dict[str, Tensor]], model: torch.nn.Module):
    """Megatron ``forward_step_func``: this rank's CP slice of the next microbatch through the model."""
    batch = split_batch_for_context_parallel(next(data_iterator))
    output = model(
        batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"]
    )
    return output, partial(masked_token_loss, batch["loss_mask"])


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step is NaN or infinite (``--nan-policy stop``)."""


@dataclass
class StepResult:
    """What a step reports (identical on every rank)."""

    loss: float  # mean token loss over the global batch
    tokens: int  # tokens that counted, whole global batch
    grad_norm: Optional[float] = None
    skipped: bool = False  # optimizer skipped the update (e.g. inf/nan gradients)
    jacobi_residuals: Optional[List[float]] = None  # latent mode, last microbatch, this rank


def _global_mean_loss(reports: List[Dict[str, Tensor]]) -> Tuple[float, int]:
    """Sum [loss_sum, count] over microbatches and data/context-parallel ranks; broadcast over PP."""
    total = torch.zeros(2, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for report in reports:
            total += report["lm loss"].double()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, count = total.tolist()
    return loss_sum / max(count, 1.0), int(count)


def _set_iteration(model_chunks: List[torch.nn.Module], iteration: int) -> None:
    for chunk in model_chunks:
        unwrap_model(chunk).iteration = iteration


def _jacobi_residuals(model_chunks: List[torch.nn.Module]) -> Optional[List[float]]:
    residuals = getattr(unwrap_model(model_chunks[-1]), "last_jacobi_residuals", None)
    return [float(r) for r in residuals] if residuals else None


def forward_backward(
    model_chunks: List[torch.nn.Module],
    microbatches: List[Dict[str, Tensor]],
    micro_batch_size: int,
    seq_length: int,
    forward_only: bool,
) -> List[Dict[str, Tensor]]:
    """Run Megatron's schedule for this layout; returns the loss reports of the last stage.

    Multi-pass modes under pipeline parallelism loop around the pipeline ring
    (:mod:`megatron_ponder.parallel.looped_pipeline`); everything else is Megatron's own
    schedule (no pipelining, or 1F1B for mode ``none``).
    """
    config = unwrap_model(model_chunks[0]).config
    pipeline_size = parallel_state.get_pipeline_model_parallel_world_size()
    if pipeline_size > 1 and dist.get_backend() == "gloo":
        # Batched isend/irecv mis-pairs same-direction messages when the next and previous
        # pipeline rank are one process (PP=2) on gloo: silently wrong results.
        config.batch_p2p_comm = False
    if pipeline_size > 1 and config.ponder_mode != "none":
        if len(model_chunks) != 1:
            raise ValueError("multi-pass modes use the passes as virtual stages: build one model chunk")
        return looped_forward_backward(
            forward_step, model_chunks[0], microbatches, micro_batch_size, seq_length, forward_only
        )
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=model_chunks,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


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

    A non-finite loss or gradient (the same verdict on every rank) raises :class:`NonFiniteLossError` with
    ``nan_policy="stop"``; with ``"skip"`` the update is dropped and the step reported skipped.
    """
    _set_iteration(model_chunks, iteration)
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = forward_backward(model_chunks, microbatches, micro_batch_size, seq_length, forward_only=False)
    loss, tokens = _global_mean_loss(reports)
    problem = f"loss is {loss}" if not math.isfinite(loss) else None
    if problem is None and not gradients_are_finite(model_chunks):
        problem = f"loss is {loss} but the gradients are not finite"
    if problem is not None:
        if nan_policy == "stop":  # iteration + 1: the number the log gives this step
            raise NonFiniteLossError(
                f"{problem} at iteration {iteration + 1}: lower --lr, check the data, or pass "
                "--nan-policy skip to drop such steps"
            )
        return StepResult(loss=loss, tokens=tokens, skipped=True)
    success, grad_norm, _ = optimizer.step()
    return StepResult(
        loss=loss,
        tokens=tokens,
        grad_norm=None if grad_norm is None else float(grad_norm),
        skipped=not success,
        jacobi_residuals=_jacobi_residuals(model_chunks),
    )


@torch.no_grad()
def evaluation_step(
    model_chunks: List[torch.nn.Module],
    microbatches: List[Dict[str, Tensor]],
    micro_batch_size: int,
    seq_length: int,
) -> StepResult:
    """Forward only (eval mode: latent mode uses ``jacobi_eval_rounds``)."""
    for chunk in model_chunks:
        chunk.eval()
    try:
        reports = forward_backward(model_chunks, microbatches, micro_batch_size, seq_length, forward_only=True)
    finally:
        for chunk in model_chunks:
            chunk.train()
    loss, tokens = _global_mean_loss(reports)
    return StepResult(loss=loss, tokens=tokens, jacobi_residuals=_jacobi_residuals(model_chunks))
