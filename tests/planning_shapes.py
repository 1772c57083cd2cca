"""Planner inputs for the tiny test models (tests/tiny_models.py), and the test cases' methods."""

from __future__ import annotations

from megatron_ponder.model.architectures import get_style
from megatron_ponder.planning.shapes import Layout, Method, ModelShape, Precision, RunSpec
from tiny_models import MAX_POSITIONS, SIZES, VOCAB

# Worker/test mode names -> planner methods (J fixed at 2, as the models are configured).
METHODS = {
    "none": Method("none"),
    "ponder": Method("ponder", ponder_steps=2),
    "latent1": Method("latent", num_latent_thoughts=1, jacobi_rounds=(2, 2)),
    "latent2": Method("latent", num_latent_thoughts=2, jacobi_rounds=(2, 2)),
}
# CPU runs: fp32 everywhere, Megatron's local layer spec.
CPU_PRECISION = Precision("fp32", "local")


def tiny_shape(style: str) -> ModelShape:
    """The tiny model of ``style`` as the planner sees it."""
    chosen = get_style(style)
    fields = chosen.config_fields
    return ModelShape(
        vocab_size=VOCAB,
        gated_linear_unit=fields.get("gated_linear_unit", False),
        normalization=fields["normalization"],
        position_embedding_type=chosen.position_embedding_type,
        add_bias_linear=fields["add_bias_linear"],
        tied_embeddings=chosen.share_embeddings_and_output_weights,
        max_position_embeddings=MAX_POSITIONS,
        **SIZES[style],
    )


def tiny_run(style: str, mode: str, seq_length: int, global_batch: int) -> RunSpec:
    return RunSpec(tiny_shape(style), METHODS[mode], seq_length=seq_length, global_batch_size=global_batch,
                   precision=CPU_PRECISION)


__all__ = ["METHODS", "CPU_PRECISION", "tiny_shape", "tiny_run", "Layout"]
