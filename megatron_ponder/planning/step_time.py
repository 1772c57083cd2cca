"""FLOPs per step (every pass), predicted step time and tokens/s under a stated utilisation.

Per pipeline stage k (its TP x CP x DP ranks share the stage's work):
    t_compute[k] = FLOPs executed on stage k per GPU (recompute included) / (peak x utilisation)
                   (layers / p each; the output layer of every logits pass, and ponder's
                   softmax + p @ E, on the last stage)
    t_work[k]    = t_compute[k] + t_TP[k] + t_PP[k] + t_CP[k]   (t_CP: only its excess over
                   t_compute[k] under TE ring attention, all of it for the local CP attention)
    t_step       = max_k t_work[k] / (1 - bubble) + max_k t_DP[k],
    bubble       = (p-1) / (m*v + p-1)   (docs/pipeline.md)

The pipeline runs at the pace of its slowest stage. Communication is modelled as this project
trains: TP/SP collectives sit between GEMMs; PP p2p is blocking as in Megatron's non-overlapped
schedule (a stage waits for its send/recv before its next chunk), so it adds to every stage's
work. DP: without ``Layout.overlap_dp`` the gradient reduce-scatter (all-reduce) and the
distributed optimizer's parameter all-gather run after the last backward, fully exposed. With it
(``--overlap-grad-reduce --overlap-param-gather``, :mod:`megatron_ponder.training.grad_overlap`)
every pass reuses the parameters, so a bucket's gradients are complete only during the backward
of the earliest pass on the last microbatch: that backward hides the reduction, and the forward
of the first pass of the next step hides the all-gather:
    t_DP[k] = max(0, t_reduce - t_bwd,0[k]) + max(0, t_gather - t_fwd,0[k]) + small collectives,
    t_bwd,0[k] = t_compute[k] / m * share_0 * (2/3, full recompute 3/4), t_fwd,0 likewise (1/3, 1/4),
with share_0 = pass 0's slots / all passes' slots (FLOPs taken as linear in the slots). With
truncated backprop the backward is the earliest pass with a graph's, and a pass without one
counts 1 (its forward) against 3 (4) per slot. Link
time = wire bytes per rank / :func:`link_bandwidth`. J varies per step: time and FLOPs are
averaged over the J range.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

from megatron_ponder.planning.communication import group_sizes, step_traffic, step_wire_bytes, wire_bytes
from megatron_ponder.planning.schedule import bubble_fraction, step_passes
from megatron_ponder.planning.shapes import Cluster, Layout, RunSpec
from megatron_ponder.training.flops import step_flops

DEFAULT_UTILISATION = {"bf16": 0.40, "fp8": 0.30, "fp32": 0.40}


def _flops_config(run: RunSpec, recompute: str) -> SimpleNamespace:
    """The TransformerConfig attributes ``training.flops.step_flops`` reads."""
    m = run.model
    return SimpleNamespace(
        hidden_size=m.hidden_size, num_query_groups=m.num_query_groups, kv_channels=m.kv_channels,
        gated_linear_unit=m.gated_linear_unit, ffn_hidden_size=m.ffn_hidden_size, num_layers=m.num_layers,
        recompute_granularity=None if recompute == "none" else recompute,
        ponder_mode=run.method.mode, ponder_steps=run.method.ponder_steps,
        ponder_accumulate=run.method.ponder_accumulate, num_latent_thoughts=run.method.num_latent_thoughts,
        ponder_grad_steps=run.method.ponder_grad_steps, jacobi_grad_rounds=run.method.jacobi_grad_rounds,
        ponder_topk=None,  # the planner models dense mixing (memory and FLOPs); top-K is cheaper
    )


def executed_flops(run: RunSpec, recompute: str, jacobi_rounds: int) -> float:
    """FLOPs of one global batch, all passes, including what recompute repeats.

    ``step_flops`` counts full recompute (one more forward of the layers); selective recompute
    repeats the attention-score GEMMs (4*b*s^2*h per layer and pass with a backward). A pass
    without a graph (truncated backprop) runs its forward only.
    """
    flops = step_flops(_flops_config(run, recompute), run.seq_length, run.global_batch_size,
                       run.model.vocab_size, jacobi_rounds)
    if recompute == "selective":
        for spec in step_passes(run.method, jacobi_rounds):
            if not spec.builds_graph:
                continue
            slots = spec.slots_per_token * run.seq_length
            flops += run.model.num_layers * 4 * run.global_batch_size * slots * slots * run.model.hidden_size
    return flops


def model_flops(run: RunSpec, jacobi_rounds: int) -> float:
    """FLOPs of the method itself (no recompute): the numerator of MFU."""
    return executed_flops(run, "none", jacobi_rounds)


def _stage_flops(run: RunSpec, recompute: str, jacobi_rounds: int, layout: Layout, stage: int) -> float:
    """Executed FLOPs of one pipeline stage (all its TP x CP x DP ranks together).

    The layers split evenly over the stages; the output layer of every pass that makes logits
    (and in ponder mode the softmax + p @ E mixing) runs on the last stage. The embedding is a
    lookup (no GEMM FLOPs) on the first stage.
    """
    total = executed_flops(run, recompute, jacobi_rounds)
    no_layers = replace(run, model=replace(run.model, num_layers=0))
    head = executed_flops(no_layers, recompute, jacobi_rounds)  # output layer (+ p @ E) only
    return (total - head) / layout.pp + (head if stage == layout.pp - 1 else 0.0)


def link_bandwidth(group: str, layout: Layout, cluster: Cluster) -> float:
    """Bytes/s per rank for a group's traffic.

    Megatron's rank order tp-cp-dp-pp (TP innermost): a group of ``size`` ranks ``stride``
    apart. Inside one node: NVLink. Across nodes, a collective's ring runs over the NICs of the
    group's r ranks in each node in parallel (rail-optimised fabric, one NIC per GPU, NCCL
    spreading channels over them): min(NVLink, r x InfiniBand per GPU) (an assumption). A PP
    message leaves through one GPU's NIC: InfiniBand per GPU once the stages span nodes.
    """
    stride, size = {
        "tp": (1, layout.tp),
        "cp": (layout.tp, layout.cp),
        "dp": (layout.tp, layout.cp * layout.dp),  # gradients reduce over DP x CP
        "pp": (layout.tp * layout.cp * layout.dp, layout.pp),
    }[group]
    intra, inter = cluster.intra_node_gbps * 1e9, cluster.inter_node_gbps * 1e9
    if stride * size <= cluster.gpus_per_node:
        return intra
    if group == "pp":
        return inter
    ranks_per_node = max(1, cluster.gpus_per_node // stride)
    return min(intra, inter * ranks_per_node)


def exposed_dp_seconds(run: RunSpec, layout: Layout, stage: int, rounds: int, stage_compute: float,
                       bandwidth: float) -> float:
    """Data-parallel link time of stage ``stage`` left on the step's critical path."""
    ops = step_traffic(run, layout, stage, rounds).payload.get("dp", {})
    size = group_sizes(layout)["dp"]
    seconds = {op: wire_bytes(op, payload, size) / bandwidth for op, payload in ops.items()}
    if not layout.overlap_dp:
        return sum(seconds.values())
    # Compute of a pass ~ its slots x (forward, backward and recompute: 3 or 4; a pass without a
    # graph 1). The reduction hides behind the backward of the earliest pass with a graph (the
    # last gradient contribution), the all-gather behind the forward of pass 0.
    passes = step_passes(run.method, rounds)
    per_forward = 4 if layout.recompute == "full" else 3
    units = [spec.slots_per_token * (per_forward if spec.builds_graph else 1) for spec in passes]
    unit = stage_compute / layout.num_microbatches / sum(units)
    earliest = next(spec for spec in passes if spec.builds_graph)
    hiding_reduce = unit * earliest.slots_per_token * (per_forward - 1)
    hiding_gather = unit * passes[0].slots_per_token
    reduce_op = "reduce_scatter" if layout.distributed_optimizer else "all_reduce"
    # The big all_reduce (no distributed optimizer) is the gradients; the 4- and 16-byte
    # all-reduces of the token counts stay exposed (negligible).
    reduce = wire_bytes(reduce_op, ops.get(reduce_op, 0.0), size) / bandwidth
    small = sum(seconds.values()) - reduce - seconds.get("all_gather", 0.0)
    exposed_reduce = max(0.0, reduce - hiding_reduce)
    exposed_gather = max(0.0, seconds.get("all_gather", 0.0) - hiding_gather)
    return exposed_reduce + exposed_gather + small


@dataclass
class StepTime:
    flops: float  # executed per step (all GPUs), mean over J
    model_flops: float
    bubble: float
    compute_s: float  # slowest stage's compute per GPU
    comm_bytes: dict  # per parallelism, bytes one rank sends per step (worst stage)
    comm_s: dict  # per parallelism, link time (before overlap)
    step_s: float
    tokens_per_s: float
    mfu: float


def predict_step_time(run: RunSpec, layout: Layout, cluster: Cluster, utilisation: float = None) -> StepTime:
    """Mean step time over the J range for ``layout`` on ``cluster``."""
    utilisation = utilisation or DEFAULT_UTILISATION[run.precision.name]
    peak = cluster.peak_flops(run.precision)
    lo, hi = run.method.jacobi_rounds if run.method.mode == "latent" else (0, 0)
    rows = []
    for rounds in range(lo, hi + 1):
        flops = executed_flops(run, layout.recompute, rounds)
        bubble = bubble_fraction(layout.pp, layout.num_microbatches, len(step_passes(run.method, rounds)))
        ranks_per_stage = layout.tp * layout.cp * layout.dp
        wire, comm, chunk_work, dp_time, compute = {}, {}, 0.0, 0.0, 0.0
        for stage in range(layout.pp):
            stage_compute = _stage_flops(run, layout.recompute, rounds, layout, stage) / ranks_per_stage
            stage_compute /= peak * utilisation
            stage_wire = step_wire_bytes(run, layout, stage, rounds)
            stage_comm = {g: nbytes / link_bandwidth(g, layout, cluster) for g, nbytes in stage_wire.items()}
            for group in stage_wire:
                wire[group] = max(wire.get(group, 0.0), stage_wire[group])
                comm[group] = max(comm.get(group, 0.0), stage_comm[group])
            cp = stage_comm.get("cp", 0.0)
            if run.precision.kernels == "te":  # TE's ring attention overlaps its exchange
                cp = max(0.0, cp - stage_compute)
            work = stage_compute + stage_comm.get("tp", 0.0) + stage_comm.get("pp", 0.0) + cp
            chunk_work = max(chunk_work, work)
            compute = max(compute, stage_compute)
            dp_time = max(dp_time, exposed_dp_seconds(run, layout, stage, rounds, stage_compute,
                                                      link_bandwidth("dp", layout, cluster)))
        step = chunk_work / (1 - bubble) + dp_time
        rows.append((flops, model_flops(run, rounds), bubble, compute, comm, step, wire))
    count = len(rows)
    mean = [sum(row[i] for row in rows) / count for i in (0, 1, 2, 3, 5)]
    comm_mean = {g: sum(row[4].get(g, 0.0) for row in rows) / count for g in rows[0][4]}
    bytes_mean = {g: sum(row[6].get(g, 0.0) for row in rows) / count for g in rows[0][6]}
    flops, mflops, bubble, compute, step = mean
    tokens = run.global_batch_size * run.seq_length
    return StepTime(
        flops=flops, model_flops=mflops, bubble=bubble, compute_s=compute, comm_bytes=bytes_mean,
        comm_s=comm_mean, step_s=step,
        tokens_per_s=tokens / step, mfu=mflops / (step * layout.world_size * peak),
    )
