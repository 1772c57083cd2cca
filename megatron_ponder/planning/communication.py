"""Collective bytes of one training step, per parallelism, per rank.

Unit: *payload* bytes per collective call as torch.distributed sees it: the tensor of an
all-reduce, the full (gathered) tensor of an all-gather or a reduce-scatter, the message of a
send. Wire bytes per rank follow from the algorithm (ring): all-reduce 2(n-1)/n x payload,
all-gather / reduce-scatter (n-1)/n x payload, send 1 x payload (:func:`wire_bytes`).

What is counted (Megatron-Core 0.16, this project's model and step):

* TP/SP, per transformer layer and pass over S slots, x = S*b*h activation bytes:
  SP: forward all-gather before qkv and fc1, reduce-scatter after proj and fc2; backward
  all-gathers the inputs of qkv and fc1 again (weight gradients) and the output gradients of
  proj and fc2, and reduce-scatters the input gradients of qkv and fc1: 6 AG + 4 RS of x.
  Without SP: 2 all-reduces forward, 2 backward. Full recompute repeats the forward's. A pass
  without a graph (truncated backprop) has the forward's only (layers and CP; the output layer's
  few [L, b, h] collectives are counted as with a backward, an upper bound). PP: its chunks still
  send the (zero) gradient Megatron's schedule expects.
  Embedding (every pass on the first stage under PP), output layer and vocab-parallel
  cross-entropy (3 fp32 all-reduces of [s, b]), ponder's vocab-parallel softmax (max, and the
  sum forward and backward) and the p @ E reduction; SP's norm/bias gradient all-reduce.
* CP: K and V exchange per layer and pass (the project's local CP attention: all-gather
  forward, all-reduce of their gradients backward; TE ring attention: cp-1 sends of the local K, V forward, twice that
  backward); full and selective recompute both re-run core attention, so its forward exchange twice.
* PP: p2p messages of T*L/cp (/tp under SP) slots, P passes per microbatch (see
  docs/pipeline.md): a rank sends P forward messages per microbatch (the last stage P-1) and
  P backward (the first stage P-1); plus the tied / feedback embedding-gradient all-reduce
  between first and last stage, and the step's loss all-reduce.
* DP: gradient reduction over the DP x CP group, fp32 grads (grad_reduce_in_fp32): all-reduce,
  or with the distributed optimizer reduce-scatter of grads + all-gather of updated params.
  Bucket padding is ignored (+2.5% on the tiny test model, negligible at scale).
* Scalars: the step's loss all-reduce and finalize_model_grads' token count (PP broadcast, DP
  all-reduce); the gradient-norm all-reduce over the model-parallel group is not counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict

from megatron_ponder.model.passes import PassKind
from megatron_ponder.planning.memory import needs_output_copy, stage_params
from megatron_ponder.planning.schedule import pipeline_message_blocks, step_passes
from megatron_ponder.planning.shapes import Layout, RunSpec

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send")


@dataclass
class Traffic:
    """Payload bytes per (parallelism, op) on one rank for one step."""

    payload: Dict[str, Dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def add(self, group: str, op: str, nbytes: float, times: float = 1.0) -> None:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        self.payload[group][op] += nbytes * times


def wire_bytes(op: str, payload: float, group_size: int) -> float:
    """Bytes one rank sends for ``payload`` with ring algorithms on ``group_size`` ranks."""
    if group_size <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (group_size - 1) / group_size * payload
    if op in ("all_gather", "reduce_scatter", "broadcast"):
        return (group_size - 1) / group_size * payload
    return payload


def _tensor_parallel(traffic: Traffic, run: RunSpec, layout: Layout, stage: int, passes) -> None:
    model, tp = run.model, layout.tp
    if tp == 1:
        return
    e = run.precision.activation_bytes
    b, h = layout.micro_batch_size, model.hidden_size
    tokens = run.seq_length // layout.cp
    layers = model.num_layers // layout.pp
    m = layout.num_microbatches
    first, last = stage == 0, stage == layout.pp - 1
    for v, spec in enumerate(passes):
        x = spec.slots_per_token * tokens * b * h * e
        x_tok = tokens * b * h * e
        recomputed = 1 if layout.recompute == "full" else 0
        if not spec.builds_graph:  # truncated backprop: the layers' forward collectives only
            traffic.add("tp", "all_gather" if layout.sp else "all_reduce", x, m * layers * 2)
            if layout.sp:
                traffic.add("tp", "reduce_scatter", x, m * layers * 2)
        elif layout.sp:
            traffic.add("tp", "all_gather", x, m * layers * (6 + 2 * recomputed))
            traffic.add("tp", "reduce_scatter", x, m * layers * (4 + 2 * recomputed))
        else:
            traffic.add("tp", "all_reduce", x, m * layers * (4 + 2 * recomputed))
        if first and (v == 0 or layout.pp > 1):  # PP stages re-embed every pass
            if layout.sp and model.position_embedding_type != "learned_absolute":
                traffic.add("tp", "reduce_scatter", x_tok, m)  # reduce-scatter embeddings
                traffic.add("tp", "all_gather", x_tok, m)
            else:
                traffic.add("tp", "all_reduce", x_tok, m)
                if layout.sp:  # scatter to the sequence shard; backward gathers
                    traffic.add("tp", "all_gather", x_tok, m)
        if last and spec.kind in (PassKind.PONDER_FEEDBACK, PassKind.FINAL):
            if layout.sp:  # output layer: gather input, backward regather + reduce-scatter dgrad
                traffic.add("tp", "all_gather", x_tok, 2 * m)
                traffic.add("tp", "reduce_scatter", x_tok, m)
            else:
                traffic.add("tp", "all_reduce", x_tok, m)
            # Three fp32 all-reduces of [L, b]: cross-entropy's max, target logit and sum of exp;
            # ponder's softmax max, and its sum forward and backward.
            traffic.add("tp", "all_reduce", tokens * b * 4, 3 * m)
            if spec.kind is PassKind.PONDER_FEEDBACK:  # p @ E summed over the vocabulary shards
                mix = tokens * b * h * run.precision.param_bytes
                if layout.sp:
                    traffic.add("tp", "reduce_scatter", mix, m)
                    traffic.add("tp", "all_gather", mix, m)
                else:
                    traffic.add("tp", "all_reduce", mix, m)
    if layout.sp:
        norms = h * (2 if model.normalization == "LayerNorm" else 1)
        replicated = layers * (2 * norms + (2 * h if model.add_bias_linear else 0)) + (norms if last else 0)
        traffic.add("tp", "all_reduce", replicated * 4)


def _context_parallel(traffic: Traffic, run: RunSpec, layout: Layout, passes) -> None:
    cp = layout.cp
    if cp == 1:
        return
    model = run.model
    e = run.precision.activation_bytes
    b = layout.micro_batch_size
    layers = model.num_layers // layout.pp
    kv = 2 * model.num_query_groups * model.kv_channels / layout.tp * b * e  # K and V per slot
    m = layout.num_microbatches
    # Both recompute policies re-run core attention, where the K/V exchange happens.
    forwards = 1 if layout.recompute == "none" else 2
    for spec in passes:
        slots_local = spec.slots_per_token * run.seq_length // cp
        if not spec.builds_graph:  # truncated backprop: one forward, no backward exchange
            if run.precision.kernels == "te":
                traffic.add("cp", "send", slots_local * kv, m * layers * (cp - 1))
            else:
                traffic.add("cp", "all_gather", slots_local * cp * kv, m * layers)
            continue
        if run.precision.kernels == "te":
            traffic.add("cp", "send", slots_local * kv, m * layers * (cp - 1) * (forwards + 2))
        else:
            # model/context_parallel_attention.py: all-gather K, V; backward all-reduces their gradients
            # and keeps its slice on gloo (no reduce-scatter there: what the CPU measurement sees).
            # On NCCL it reduce-scatters instead, half this traffic: an upper bound on GPUs.
            gathered = slots_local * cp * kv
            traffic.add("cp", "all_gather", gathered, m * layers * forwards)
            traffic.add("cp", "all_reduce", gathered, m * layers)


def _pipeline(traffic: Traffic, run: RunSpec, layout: Layout, stage: int, passes) -> None:
    pp = layout.pp
    if pp == 1:
        return
    e = run.precision.activation_bytes
    sp_div = layout.tp if layout.sp else 1
    message = pipeline_message_blocks(passes) * run.seq_length // layout.cp // sp_div * layout.micro_batch_size
    message *= run.model.hidden_size * e
    m, num_passes = layout.num_microbatches, len(passes)
    forward = num_passes - (1 if stage == pp - 1 else 0)
    backward = num_passes - (1 if stage == 0 else 0)
    traffic.add("pp", "send", message, m * (forward + backward))
    if (stage in (0, pp - 1)) and needs_output_copy(run.model, run.method, pp):
        traffic.add("pp", "all_reduce", run.model.vocab_size / layout.tp * run.model.hidden_size * 4)
    # The step's [loss sum, token count] and the last microbatch's J Jacobi residuals, float64,
    # shared from the last stage (training.step._reduce_reports).
    rounds = sum(p.kind is PassKind.JACOBI_ROUND for p in passes)
    traffic.add("pp", "all_reduce", 8 * (2 + rounds))
    traffic.add("pp", "broadcast", 4)  # finalize_model_grads: the global token count (int32)


def _data_parallel(traffic: Traffic, run: RunSpec, layout: Layout, stage: int) -> None:
    if layout.dp * layout.cp == 1:
        return
    params = stage_params(run.model, run.method, layout, stage)
    if layout.distributed_optimizer:
        traffic.add("dp", "reduce_scatter", params * 4)
        traffic.add("dp", "all_gather", params * run.precision.param_bytes)
    else:
        traffic.add("dp", "all_reduce", params * 4)
    traffic.add("dp", "all_reduce", 4)  # finalize_model_grads: the global token count (int32)
    if stage == layout.pp - 1:
        traffic.add("dp", "all_reduce", 16)  # the step's [loss sum, token count] in float64


def group_sizes(layout: Layout) -> Dict[str, int]:
    return dict(tp=layout.tp, cp=layout.cp, pp=layout.pp, dp=layout.dp * layout.cp)


def step_traffic(run: RunSpec, layout: Layout, stage: int, jacobi_rounds: int) -> Traffic:
    """Payload bytes of one step on a rank of pipeline stage ``stage``."""
    passes = step_passes(run.method, jacobi_rounds)
    traffic = Traffic()
    _tensor_parallel(traffic, run, layout, stage, passes)
    _context_parallel(traffic, run, layout, passes)
    _pipeline(traffic, run, layout, stage, passes)
    _data_parallel(traffic, run, layout, stage)
    return traffic


def step_wire_bytes(run: RunSpec, layout: Layout, stage: int, jacobi_rounds: int) -> Dict[str, float]:
    """Bytes one rank sends per step, per parallelism."""
    traffic = step_traffic(run, layout, stage, jacobi_rounds)
    sizes = group_sizes(layout)
    return {
        group: sum(wire_bytes(op, payload, sizes[group]) for op, payload in ops.items())
        for group, ops in traffic.payload.items()
    }
