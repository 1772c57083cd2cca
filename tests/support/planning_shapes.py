"""Planner inputs for the tiny test models (tests/support/tiny_models.py), and the test cases' methods."""

from __future__ import annotations

from megatron_ponder.planning.shapes import Method, ModelShape, Precision, RunSpec
from megatron_ponder.variants import MODES, variant
from support.tiny_models import MAX_POSITIONS, SIZES, VOCAB

# PonderConfig field -> Method field, where the names differ.
_METHOD_FIELDS = {"ponder_mode": "mode", "jacobi_train_rounds": "jacobi_rounds"}


def planner_method(fields: dict) -> Method:
    """The planner's Method for PonderConfig method fields."""
    return Method(**{_METHOD_FIELDS.get(name, name): value for name, value in fields.items()})


# Worker/test mode names -> planner methods (J fixed at 2, as the models are run).
METHODS = {name: planner_method(variant(name, rounds=(2, 2))) for name in MODES}
# CPU runs: fp32 everywhere, Megatron's local layer spec (with the SDPA core attention, its default).
CPU_PRECISION = Precision("fp32", "local")


def tiny_shape(style: str) -> ModelShape:
    """The tiny model of ``style`` as the planner sees it."""
    return ModelShape.from_style(style, VOCAB, MAX_POSITIONS, **SIZES[style])


def tiny_run(style: str, mode: str, seq_length: int, global_batch: int, local_attention: str = "sdpa") -> RunSpec:
    precision = Precision(CPU_PRECISION.name, CPU_PRECISION.kernels, local_attention)
    return RunSpec(tiny_shape(style), METHODS[mode], seq_length=seq_length, global_batch_size=global_batch,
                   precision=precision)

