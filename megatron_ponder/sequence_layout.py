"""The sequence-layout invariant of the parallel layouts, checked where sizes are chosen.

Shards of the sequence (sequence parallelism: L/tp tokens per rank; context parallelism: 2*cp
chunks of L/(2cp) tokens) are cut at token granularity, and latent mode interleaves thoughts
*after* the cut, so every shard holds whole token groups exactly when these token counts are
integers. The command line, the model's forward and the CP batch split all check it here.
"""

from __future__ import annotations


class ContextParallelLayoutError(ValueError):
    """The sequence cannot be split into whole token groups for the requested parallel sizes."""


def check_sequence_layout(
    seq_length: int,
    tensor_parallel_size: int,
    sequence_parallel: bool,
    context_parallel_size: int,
    length_name: str = "seq_length",
) -> None:
    """Raise a one-line error unless every shard can hold whole token groups.

    Shards are cut at token granularity (SP: L/tp tokens per rank; CP: 2*cp chunks of
    L/(2cp) tokens) and thoughts are interleaved after the cut, so token groups stay whole exactly
    when these token counts are integers. ``length_name`` is how the message names the length
    (the command line passes ``--seq-length``).
    """
    if sequence_parallel and seq_length % tensor_parallel_size != 0:
        raise ContextParallelLayoutError(
            f"{length_name} {seq_length} is not divisible by tensor-parallel size "
            f"{tensor_parallel_size}: sequence parallelism gives each rank L/tp whole tokens "
            "(with their thoughts); pick a multiple"
        )
    chunks = 2 * context_parallel_size
    if context_parallel_size > 1 and seq_length % chunks != 0:
        raise ContextParallelLayoutError(
            f"{length_name} {seq_length} is not divisible by 2 x context-parallel size = {chunks}: "
            "context parallelism splits the sequence into 2*cp chunks of whole tokens; pick a multiple"
        )
