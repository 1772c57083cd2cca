"""A copy of the word embeddings on the last pipeline stage, for ponder feedback of untied models.

Ponder feedback needs both W_out (logits) and E (mixture rows) on the stage that builds it, the
last pipeline stage. Tied models already have E there (Megatron keeps a synchronised copy of the
shared table on the last stage). Untied models get the same treatment for E alone, mirroring
Megatron's tied-embedding mechanics:

  * the copy starts at zero and is all-reduced with the first stage's table over the embedding
    group, so both start equal;
  * after Megatron's ``finalize_model_grads`` the two gradients are all-reduced over the same
    group (:func:`finalize_ponder_model_grads`), so both take identical optimizer updates;
  * the copy is marked ``shared`` so gradient norms count the table once;
  * in checkpoints it is a replica of ``embedding.word_embeddings.weight`` (never written twice,
    restored from the first stage's table on load).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from megatron.core import parallel_state
from megatron.core.distributed.finalize_model_grads import (
    _allreduce_embedding_grad,
    finalize_model_grads,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint, unwrap_model

FEEDBACK_KEY = "feedback_word_embeddings"


def needs_feedback_embedding(model) -> bool:
    """Ponder mode, pipeline-parallel and untied: the last stage has no E of its own."""
    config = model.config
    return (
        config.ponder_mode == "ponder"
        and config.pipeline_model_parallel_size > 1
        and not model.share_embeddings_and_output_weights
    )


def add_feedback_embedding(model) -> None:
    """Create the last stage's copy of E and make it equal to the first stage's table.

    Collective over the embedding group: call on every rank while building the model.
    """
    if not needs_feedback_embedding(model):
        return
    if model.post_process and not model.pre_process:
        output_weight = model.output_layer.weight  # [V/tp, h]: the same vocabulary split as E
        copy = torch.nn.Parameter(torch.zeros_like(output_weight))
        set_tensor_model_parallel_attributes(copy, is_parallel=True, dim=0, stride=1)
        copy.shared = True
        copy.shared_embedding = True
        copy.is_embedding_or_output_parameter = True
        setattr(model, FEEDBACK_KEY, copy)
        synced = copy
    elif model.pre_process and not model.post_process:
        synced = model.embedding.word_embeddings.weight
        # Own grad bucket under the distributed optimizer, as for tied embeddings: both stages
        # then shard the table the same way across DP ranks, so the reduce-scattered shards
        # that the embedding-group all-reduce adds up belong to the same rows.
        synced.shared_embedding = True
    else:
        return
    group = parallel_state.get_embedding_group()
    if torch.distributed.get_rank() in torch.distributed.get_process_group_ranks(group):
        torch.distributed.all_reduce(synced.data, group=group)


def tie_feedback_embedding_state_dict(model, sharded_state_dict, prefix: str, metadata: dict) -> None:
    """Store the copy as a replica of the first stage's ``embedding.word_embeddings.weight``."""
    key = f"{prefix}{FEEDBACK_KEY}"
    if key not in sharded_state_dict:
        return
    sharded_state_dict[key] = make_tp_sharded_tensor_for_checkpoint(
        tensor=getattr(model, FEEDBACK_KEY),
        key=f"{prefix}embedding.word_embeddings.weight",
        replica_id=(1, 0, parallel_state.get_data_parallel_rank(with_context_parallel=True)),
        allow_shape_mismatch=True,
        tp_group=model.tp_group,
        dp_cp_group=metadata["dp_cp_group"],
    )


def _stage_table(model_module) -> Optional[torch.nn.Parameter]:
    if model_module.pre_process:
        return model_module.embedding.word_embeddings.weight
    return getattr(model_module, FEEDBACK_KEY, None)


def finalize_ponder_model_grads(model: List[torch.nn.Module], num_tokens=None, pg_collection=None, force_all_reduce=False):
    """Megatron's ``finalize_model_grads``, then the sum of the E / E-copy gradients."""
    finalize_model_grads(model, num_tokens, pg_collection=pg_collection, force_all_reduce=force_all_reduce)
    inner = unwrap_model(model[0])
    if needs_feedback_embedding(inner):
        _allreduce_embedding_grad(
            model,
            # None on a middle stage (not in the group): Megatron's helper then skips the reduction.
            parallel_state.get_embedding_group(check_initialized=False),
            parallel_state.get_pipeline_model_parallel_group(),
            _stage_table,
        )
