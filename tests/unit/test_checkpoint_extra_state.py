"""A checkpoint written with the local layers loads into a model whose modules carry
``_extra_state`` (Transformer Engine's FP8 scaling state): the objects the checkpoint lacks are
not requested, those it holds are, and every weight still is."""

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.transformer.utils import make_sharded_object_for_checkpoint
from support.tiny_models import tiny_model

from megatron_ponder.training.checkpointing.save_load import without_absent_extra_state

# TE's core attention keeps FP8 state; the local spec's core attention has no _extra_state (its
# linear layers do, under the same keys as TE's, so those load either way).
EXTRA = "decoder.layers.0.self_attention.core_attention._extra_state"


def _extra_state_object(key: str) -> ShardedObject:
    """As a TE module's ``sharded_state_dict`` makes it (replicated over TP and DP)."""
    return make_sharded_object_for_checkpoint({"scale": torch.ones(1)}, key)


def test_only_extra_state_the_checkpoint_lacks_is_dropped(megatron_world_of_one, tmp_path):
    model = tiny_model("llama")
    assert EXTRA not in model.sharded_state_dict()
    local = tmp_path / "local"
    local.mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(local))
    with_extra = tmp_path / "with_extra"
    with_extra.mkdir()
    dist_checkpointing.save({**model.sharded_state_dict(), EXTRA: _extra_state_object(EXTRA)}, str(with_extra))

    request = {**model.sharded_state_dict(), EXTRA: _extra_state_object(EXTRA)}
    kept, absent = without_absent_extra_state(request, str(local))
    assert absent == {EXTRA} and set(kept) == set(request) - {EXTRA}
    loaded = dist_checkpointing.load(kept, str(local))  # would fail on the missing object
    assert set(loaded) == set(kept)

    kept, absent = without_absent_extra_state(request, str(with_extra))
    assert absent == set() and set(kept) == set(request)
    assert dist_checkpointing.load(kept, str(with_extra))[EXTRA]["scale"].item() == 1.0
