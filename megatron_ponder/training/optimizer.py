"""Megatron DDP (optionally with the distributed optimizer) around a model, and its optimizer."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_ponder.model.feedback_embedding import finalize_ponder_model_grads
from megatron_ponder.runtime.parallel_init import configure_pipeline_p2p
from megatron_ponder.training.grad_overlap import configure_overlap


def wrap_and_build_optimizer(
    model_chunks: List[torch.nn.Module],
    optimizer_config: OptimizerConfig,
    overlap_grad_reduce: bool = False,
    overlap_param_gather: bool = False,
    bucket_size: Optional[int] = None,
) -> Tuple[List[DistributedDataParallel], object]:
    """Wrap every model chunk in Megatron DDP and build Megatron's optimizer over them.

    ``optimizer_config.use_distributed_optimizer`` shards optimizer state (ZeRO-1) over the
    data-parallel group. The model config must already carry ``calculate_per_token_loss=True``
    (DDP then sums gradients and ``finalize_model_grads`` divides by the global token count).
    Also sets what Megatron's schedules read from the config: the gradient finalisation and the
    backend's p2p options.
    ``overlap_grad_reduce`` starts each bucket's reduction during the backward, once its last
    contribution of the step is in; ``overlap_param_gather`` (distributed optimizer) defers the
    parameter all-gather to the next forward (:mod:`megatron_ponder.training.grad_overlap`).
    ``bucket_size``: parameters per DDP bucket under overlap (None: Megatron's default).
    """
    if overlap_param_gather and not (overlap_grad_reduce and optimizer_config.use_distributed_optimizer):
        raise ValueError("overlap_param_gather needs overlap_grad_reduce and the distributed optimizer")
    config = model_chunks[0].config
    if not config.calculate_per_token_loss:
        raise ValueError(
            "set calculate_per_token_loss=True in the model config: the training step returns "
            "per-token loss sums and relies on finalize_model_grads to divide by the token count"
        )
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        use_distributed_optimizer=optimizer_config.use_distributed_optimizer,
        bucket_size=bucket_size,
    )
    wrapped = [
        DistributedDataParallel(
            config,
            ddp_config,
            chunk,
            # Only the first chunk's buffers may be bucketed together with later chunks' grads.
            disable_bucketing=index > 0,
        )
        for index, chunk in enumerate(model_chunks)
    ]
    # The schedules read these from the model config.
    config.finalize_model_grads_func = finalize_ponder_model_grads
    configure_pipeline_p2p(config)
    configure_overlap(config, wrapped)
    optimizer = get_megatron_optimizer(optimizer_config, wrapped)
    return wrapped, optimizer
