"""Per-GPU memory of a layout: weights, gradients, optimizer state and in-flight activations.

Weights and gradients are counted per rank from the parameters Megatron builds on that rank
(pipeline stage, tensor-parallel shard). State per parameter, as this project trains
(``training/optimizer.py``: Megatron DDP with ``grad_reduce_in_fp32=True``, Adam):

    weights  param_bytes (2 for bf16; FP8 adds a 1-byte weight copy kept by TE)
    grads    4 (fp32 main-grad buffer)
    optimizer  Adam m, v (4 + 4) + fp32 master weights (4, unless the params are fp32),
               divided by dp*cp under the distributed optimizer (ZeRO-1 over the DP x CP group).

Activations: the peak over the step of the bytes saved for backward, replaying the pipeline
schedule in use (:mod:`.schedule`) with each (microbatch, pass) chunk sized by
:mod:`.activations` (a pass without a graph, truncated backprop, saves nothing); on top of it the largest transient of a layer's backward
(:func:`.activations.backward_temporaries_bytes`); the worst pipeline rank is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from megatron_ponder.model.passes import PassKind
from megatron_ponder.planning import activations as act
from megatron_ponder.planning.schedule import (
    peak_in_flight,
    pipeline_message_blocks,
    schedule_order,
    step_passes,
)
from megatron_ponder.planning.shapes import Layout, Method, ModelShape, Precision, RunSpec

GIB = 1024**3


def layer_params(model: ModelShape, tp: int) -> float:
    """Parameters of one transformer layer on one tensor-parallel rank."""
    h, f = model.hidden_size, model.ffn_hidden_size
    qkv_width = (model.num_attention_heads + 2 * model.num_query_groups) * model.kv_channels
    fc1_width = f * (2 if model.gated_linear_unit else 1)
    norm = h * (2 if model.normalization == "LayerNorm" else 1)
    weights = (h * qkv_width + model.num_attention_heads * model.kv_channels * h + h * fc1_width + f * h) / tp
    biases = (qkv_width + fc1_width) / tp + 2 * h if model.add_bias_linear else 0.0
    return 2 * norm + weights + biases


def needs_output_copy(model: ModelShape, method: Method, pp: int) -> bool:
    """The last stage keeps a copy of E: tied embeddings (Megatron) or untied ponder (feedback)."""
    return pp > 1 and (model.tied_embeddings or method.mode == "ponder")


def stage_params(model: ModelShape, method: Method, layout: Layout, stage: int) -> float:
    """Parameters on one rank of pipeline stage ``stage``."""
    if model.num_layers % layout.pp:
        raise ValueError(f"num_layers {model.num_layers} is not divisible by pipeline size {layout.pp}")
    tp, h = layout.tp, model.hidden_size
    vocab_rows = model.vocab_size / tp * h
    count = model.num_layers // layout.pp * layer_params(model, tp)
    if stage == 0:
        count += vocab_rows
        if model.position_embedding_type == "learned_absolute":
            count += model.max_position_embeddings * h
    if stage == layout.pp - 1:
        count += h * (2 if model.normalization == "LayerNorm" else 1)
        if not model.tied_embeddings:
            count += vocab_rows
        if needs_output_copy(model, method, layout.pp):
            count += vocab_rows
    return count


def total_params(model: ModelShape) -> float:
    """Parameters of the whole model (one copy of every table)."""
    one_stage = Layout()
    return stage_params(model, Method(), one_stage, 0)


def state_bytes_per_param(precision: Precision, shards: int) -> dict:
    """Bytes per parameter of weights, fp32 grads and Adam state (sharded over ``shards``)."""
    weights = precision.param_bytes + (1 if precision.name == "fp8" else 0)
    master = 0 if precision.param_bytes == 4 else 4
    return dict(weights=weights, grads=4, optimizer=(8 + master) / shards)


def pass_bytes(run: RunSpec, layout: Layout, stage: int, passes, v: int) -> float:
    """Activation bytes of pass ``v`` of one microbatch on pipeline stage ``stage``."""
    model = run.model
    ctx = act.ActivationContext(model, run.precision, layout)
    spec = passes[v]
    b = layout.micro_batch_size
    tokens = run.seq_length // layout.cp
    slots = spec.slots_per_token * tokens
    layers = model.num_layers // layout.pp
    multi_pass = len(passes) > 1
    if not spec.builds_graph:
        # Truncated backprop: nothing saved; past the first stage the schedule still holds the
        # received message (T*L slots) until the chunk's (empty) backward.
        if stage == 0 or not multi_pass:
            return 0.0
        blocks = pipeline_message_blocks(passes)
        return blocks * tokens * b * model.hidden_size / ctx.sp_div * run.precision.activation_bytes
    total = layers * act.layer_bytes(ctx, slots, b, layout.recompute)
    if layout.recompute == "full":
        total += act.rotary_table_bytes(ctx, slots)
    if stage == 0 and (v == 0 or layout.pp > 1):  # PP stages re-embed every pass
        total += act.embedding_bytes(ctx, tokens, b)
    if stage > 0 and multi_pass and layers:
        # The first layer keeps a view of the received message, whose storage is T*L slots.
        extra_blocks = pipeline_message_blocks(passes) - spec.slots_per_token
        total += extra_blocks * tokens * b * model.hidden_size / ctx.sp_div * run.precision.activation_bytes
    if stage == layout.pp - 1:
        total += _head(ctx, spec, slots, tokens, b)
    return total


def _head(ctx, spec, slots: int, tokens: int, batch: int) -> float:
    kind = {PassKind.FINAL: "final", PassKind.PONDER_FEEDBACK: "ponder"}.get(spec.kind, "hidden")
    return act.head_bytes(ctx, slots, tokens, batch, kind)


def _backward_extra(run: RunSpec, layout: Layout, stage: int, passes, v: int) -> float:
    """At the start of pass v's backward: + recompute working set - the head it frees first."""
    ctx = act.ActivationContext(run.model, run.precision, layout)
    tokens = run.seq_length // layout.cp
    slots = passes[v].slots_per_token * tokens
    working = act.recompute_working_bytes(ctx, slots, layout.micro_batch_size, layout.recompute)
    if working == 0 or not passes[v].builds_graph:  # a pass without a graph has no backward
        return 0.0
    head = _head(ctx, passes[v], slots, tokens, layout.micro_batch_size) if stage == layout.pp - 1 else 0.0
    return working - head


def activation_peak(run: RunSpec, layout: Layout, stage: int, jacobi_rounds: int) -> float:
    """Peak activation bytes on pipeline stage ``stage`` over one training step."""
    passes = step_passes(run.method, jacobi_rounds)
    order = schedule_order(layout.pp, stage, layout.num_microbatches, len(passes), peak_only=True)
    sizes = [pass_bytes(run, layout, stage, passes, v) for v in range(len(passes))]
    extras = [_backward_extra(run, layout, stage, passes, v) for v in range(len(passes))]
    return peak_in_flight(order, sizes.__getitem__, extras.__getitem__)


def backward_temporaries(run: RunSpec, layout: Layout, passes) -> float:
    """Transient bytes of one layer's backward at the activation peak (the longest pass's)."""
    ctx = act.ActivationContext(run.model, run.precision, layout)
    tokens = run.seq_length // layout.cp
    return max(act.backward_temporaries_bytes(ctx, spec.slots_per_token * tokens, layout.micro_batch_size)
               for spec in passes if spec.builds_graph)


@dataclass
class MemoryPlan:
    """Bytes on the most loaded GPU (the worst pipeline stage)."""

    stage: int
    params: float  # parameter count on that rank
    weights: float
    grads: float
    optimizer: float  # with the distributed optimizer if the layout uses it
    optimizer_without_distributed: float
    activations_per_pass: List[float]  # one microbatch, every pass, on that stage
    activations: float  # peak over the step under the schedule
    temporaries: float = 0.0  # backward transients on top of the activation peak (local kernels)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.temporaries


def plan_memory(run: RunSpec, layout: Layout) -> MemoryPlan:
    """Memory of the most loaded rank (memory is planned for the largest J of the range)."""
    rounds = run.method.jacobi_rounds[1]
    passes = step_passes(run.method, rounds)
    best = None
    # The first stage holds the most chunks in flight, the last the loss head, stage 1 the
    # padded pipeline messages; the stages in between hold less than stage 1.
    for stage in sorted({0, min(1, layout.pp - 1), layout.pp - 1}):
        params = stage_params(run.model, run.method, layout, stage)
        shards = layout.dp * layout.cp if layout.distributed_optimizer else 1
        per_param = state_bytes_per_param(run.precision, shards)
        plan = MemoryPlan(
            stage=stage,
            params=params,
            weights=params * per_param["weights"],
            grads=params * per_param["grads"],
            optimizer=params * per_param["optimizer"],
            optimizer_without_distributed=params * state_bytes_per_param(run.precision, 1)["optimizer"],
            activations_per_pass=[pass_bytes(run, layout, stage, passes, v) for v in range(len(passes))],
            activations=activation_peak(run, layout, stage, rounds),
            temporaries=backward_temporaries(run, layout, passes),
        )
        if best is None or plan.total > best.total:
            best = plan
    return best
