"""Planner inputs for the tiny test models (tests/tiny_models.py), and the test cases' methods."""

from __future__ import annotations

from megatron_ponder.planning.shapes import Method, ModelShape, Precision, RunSpec
from tiny_models import MAX_POSITIONS, SIZES, VOCAB

# Worker/test mode names -> planner methods (J fixed at 2, as the models are configured).
METHODS = {
    "none": Method("none"),
    "ponder": Method("ponder", ponder_steps=2),
    "latent1": Method("latent", num_latent_thoughts=1, jacobi_rounds=(2, 2)),
    "latent2": Method("latent", num_latent_thoughts=2, jacobi_rounds=(2, 2)),
}
# CPU runs: fp32 everywhere, Megatron's local layer spec (with the SDPA core attention, its default).
CPU_PRECISION = Precision("fp32", "local")


def tiny_shape(style: str) -> ModelShape:
    """The tiny model of ``style`` as the planner sees it."""
    return ModelShape.from_style(style, VOCAB, MAX_POSITIONS, **SIZES[style])


def tiny_run(style: str, mode: str, seq_length: int, global_batch: int, local_attention: str = "sdpa") -> RunSpec:
    precision = Precision(CPU_PRECISION.name, CPU_PRECISION.kernels, local_attention)
    return RunSpec(tiny_shape(style), METHODS[mode], seq_length=seq_length, global_batch_size=global_batch,
                   precision=precision)

