"""FLOPs per step (every pass), predicted step time and tokens/s under a stated utilisation.

    t_compute  = FLOPs executed per GPU (recompute included) / (peak x utilisation)
    t_pipeline = t_compute / (1 - bubble),  bubble = (p-1) / (m*v + p-1)   (docs/pipeline.md)
    t_step     = t_pipeline + t_TP + max(0, t_CP - t_compute) + max(0, t_PP - t_compute)
                 + max(0, t_DP - t_compute / m)

TP/SP collectives sit on the critical path between GEMMs (no overlap assumed). CP's K/V exchange
and PP's p2p are overlapped with compute, only their excess shows. DP gradient reduction overlaps
the last microbatch's backward and the parameter all-gather the first microbatch's forward
(Megatron's overlap_grad_reduce / overlap_param_gather): a window of about t_compute / m.
Link time = wire bytes per rank / bandwidth, NVLink when the group fits in a node, else IB
(Megatron's rank order tp-cp-dp-pp: TP innermost, PP outermost). J varies per step: time and
FLOPs are averaged over the J range.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from megatron_ponder.planning.communication import step_wire_bytes
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
        num_latent_thoughts=run.method.num_latent_thoughts,
        ponder_topk=None,  # the planner models dense mixing (memory and FLOPs); top-K is cheaper
    )


def executed_flops(run: RunSpec, recompute: str, jacobi_rounds: int) -> float:
    """FLOPs of one global batch, all passes, including what recompute repeats.

    ``step_flops`` counts full recompute (one more forward of the layers); selective recompute
    repeats the attention-score GEMMs (4*b*s^2*h per layer and pass).
    """
    flops = step_flops(_flops_config(run, recompute), run.seq_length, run.global_batch_size,
                       run.model.vocab_size, jacobi_rounds)
    if recompute == "selective":
        for spec in step_passes(run.method, jacobi_rounds):
            slots = spec.slots_per_token * run.seq_length
            flops += run.model.num_layers * 4 * run.global_batch_size * slots * slots * run.model.hidden_size
    return flops


def model_flops(run: RunSpec, jacobi_rounds: int) -> float:
    """FLOPs of the method itself (no recompute): the numerator of MFU."""
    return executed_flops(run, "none", jacobi_rounds)


def link_bandwidth(group: str, layout: Layout, cluster: Cluster) -> float:
    """Bytes/s for a group: NVLink if all its ranks share a node, else InfiniBand."""
    span = {
        "tp": layout.tp,
        "cp": layout.tp * layout.cp,
        "dp": layout.tp * layout.cp * layout.dp,
        "pp": layout.world_size if layout.tp * layout.cp * layout.dp < cluster.gpus_per_node else 10**9,
    }[group]
    gbps = cluster.intra_node_gbps if span <= cluster.gpus_per_node else cluster.inter_node_gbps
    return gbps * 1e9


@dataclass
class StepTime:
    flops: float  # executed per step (all GPUs), mean over J
    model_flops: float
    bubble: float
    compute_s: float
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
        compute = flops / layout.world_size / (peak * utilisation)
        bubble = bubble_fraction(layout.pp, layout.num_microbatches, len(step_passes(run.method, rounds)))
        wire = {}
        for stage in range(layout.pp):
            for group, nbytes in step_wire_bytes(run, layout, stage, rounds).items():
                wire[group] = max(wire.get(group, 0.0), nbytes)
        comm = {group: nbytes / link_bandwidth(group, layout, cluster) for group, nbytes in wire.items()}
        step = compute / (1 - bubble) + comm.get("tp", 0.0)
        step += max(0.0, comm.get("cp", 0.0) - compute) + max(0.0, comm.get("pp", 0.0) - compute)
        step += max(0.0, comm.get("dp", 0.0) - compute / layout.num_microbatches)
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
