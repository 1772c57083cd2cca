"""``--overlap-grad-reduce`` / ``--overlap-param-gather`` under a multi-pass backward, on Megatron DDP.

Every pass reuses the same parameters, so a parameter's gradient of a step is complete only
after the backward of the *earliest* pass on the *last* microbatch. Megatron DDP already has the
controls this needs; we only set them:

* ``config.no_sync_func = ddp.no_sync``: the schedules keep gradient sync off for every backward
  but the last microbatch's (no pipelining: one backward through all passes; the looped pipeline
  ring: each pass of the last microbatch is its own backward, the schedule re-enables sync around
  each of them and the earliest pass runs last on every stage).
* DDP's per-parameter grad-ready hook counts its calls while sync is on, and a bucket group
  launches its reduce(-scatter) when every parameter's count equals the "golden" count DDP
  records on its first step (``_ParamAndGradBucketGroup.golden_per_param_grad_ready_counts``).
  With several passes a parameter's hook fires once per pass-backward (ring), or once per
  recomputed checkpoint (activation recompute), so its golden count is the number of
  contributions of a step, and the launch comes with the last one, never earlier. With
  truncated backprop (``--jacobi-grad-rounds`` / ``--ponder-grad-steps``) the leading passes have
  no backward and fire no hook: the recorded count is that of the passes with a graph, and the
  last contribution is the earliest of them (``tests/parallel/test_overlap_grad_reduce.py``).
* That count depends on the number of passes, which latent mode draws per step (J). DDP records
  one golden table; :func:`overlapped_grad_reduce` keeps one per pass count and, for a pass
  count not seen yet, lets DDP record it again (a "first batch": the reduction then starts after
  the backward, as without overlap, and the next steps with that count overlap).
* ``--overlap-param-gather`` (distributed optimizer): the optimizer step leaves the parameter
  all-gather to DDP's forward pre-hooks, which wait for each bucket in the first pass's forward
  (later passes find the parameters in place). The model's own parameters (the ponder feedback
  copy of E on the last pipeline stage), whose hook the looped pipeline never triggers, are
  gathered at the step's start; :func:`gather_parameters_now` completes the all-gather where
  the weights are read outside a forward (checkpoint saving).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Dict, List

import torch

from megatron.core.utils import unwrap_model

# bucket group -> {passes of a step: golden grad-ready counts {param: count}}
_GOLDEN: "weakref.WeakKeyDictionary[object, Dict[int, dict]]" = weakref.WeakKeyDictionary()


def configure_overlap(model_config, ddp_chunks: List[torch.nn.Module]) -> None:
    """Let the schedules keep DDP's sync off until the last microbatch (``config.no_sync_func``).

    ``grad_sync_func`` stays None: the per-bucket grad-ready hooks launch each reduction (the
    interleaved schedule's chunk-wise ``grad_sync_func`` would launch after the *latest* pass,
    every chunk being the same model). ``param_sync_func`` stays None: DDP's forward pre-hooks
    dispatch and wait for the all-gathers.
    """
    if not any(chunk.ddp_config.overlap_grad_reduce for chunk in ddp_chunks):
        return
    syncs = [chunk.no_sync for chunk in ddp_chunks]
    model_config.no_sync_func = syncs[0] if len(syncs) == 1 else syncs


def _bucket_groups(model_chunks):
    for chunk in model_chunks:
        if getattr(chunk, "ddp_config", None) is not None and chunk.ddp_config.overlap_grad_reduce:
            yield from chunk.bucket_groups + chunk.expert_parallel_bucket_groups


@contextmanager
def overlapped_grad_reduce(model_chunks: List[torch.nn.Module], passes: int):
    """Around one step's forward-backward (after ``zero_grad_buffer``): DDP's golden grad-ready
    counts for a step of ``passes`` passes, recorded by DDP on the first such step."""
    _gather_root_parameters(model_chunks)
    groups = list(_bucket_groups(model_chunks))
    for group in groups:
        known = _GOLDEN.setdefault(group, {})
        if passes in known:
            group.golden_per_param_grad_ready_counts = known[passes]
            group.is_first_batch = False
        else:
            group.is_first_batch = True  # DDP counts this step and reduces after its backward
    yield
    for group in groups:
        if group.is_first_batch and group.per_param_grad_ready_counts:
            _GOLDEN[group][passes] = dict(group.per_param_grad_ready_counts)


def _gather_root_parameters(model_chunks: List[torch.nn.Module]) -> None:
    """Wait for the deferred all-gather of parameters held by the model itself, not a submodule.

    DDP's forward pre-hook of a module waits for the buckets of that module's own parameters.
    The looped pipeline calls the model's submodules pass by pass, never the model's own
    forward, so the ponder feedback copy of E (a parameter of the model) would stay stale.
    """
    for chunk in model_chunks:
        if not getattr(chunk, "use_forward_hook", False):
            continue
        for param in unwrap_model(chunk).parameters(recurse=False):
            if param in chunk.param_to_bucket_group:
                chunk.param_to_bucket_group[param].finish_param_sync()


def gather_parameters_now(model_chunks: List[torch.nn.Module]) -> None:
    """Finish the distributed optimizer's parameter all-gather that ``--overlap-param-gather``
    defers to the next forward (before reading the weights, e.g. to save them)."""
    for chunk in model_chunks:
        ddp_config = getattr(chunk, "ddp_config", None)
        if ddp_config is not None and ddp_config.use_distributed_optimizer and ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)
