"""Search: every layout (TP, PP, CP, DP, micro batch, recompute) that fits, ranked by tokens/s.

Candidates respect what the project runs: TP within a node and dividing heads and query groups,
PP dividing the layers, CP with L divisible by 2*cp (and at least MIN_SLOTS_PER_CP_RANK
slots of the longest pass per rank), micro batch 1 or 2, the global batch split into whole
microbatches per DP rank, and for multi-pass modes under PP at least pp microbatches, a
multiple of pp (the looped pipeline on Megatron's interleaved schedule). Sequence parallelism
is on whenever TP > 1 and the distributed optimizer always (both only save memory here).
A layout fits when the most loaded GPU's total stays under ``usable_fraction`` of its memory
(the rest: CUDA context, NCCL and allocator fragmentation, an assumption).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, List, Optional

from megatron_ponder.planning.memory import GIB, MemoryPlan, plan_memory
from megatron_ponder.planning.shapes import Cluster, Layout, RunSpec, padded_vocab_size
from megatron_ponder.planning.step_time import StepTime, predict_step_time

USABLE_FRACTION = 0.90
# Context parallelism only while each rank keeps this many slots of the longest pass: shorter
# chunks leave the ring-attention kernels too little work to hide the K/V exchange (assumption).
MIN_SLOTS_PER_CP_RANK = 1024
RECOMPUTE_CHOICES = ("none", "selective", "full")
# Plans within this speed ratio of the fastest are ties (below the model's resolution).
TIE_TOLERANCE = 1.005


@dataclass
class Plan:
    """One layout of a run, with its memory and time."""

    run: RunSpec
    layout: Layout
    memory: MemoryPlan
    time: StepTime
    memory_limit: float  # bytes usable per GPU

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_limit


def run_for_layout(run: RunSpec, layout: Layout, vocab_divisible_by: Optional[int]) -> RunSpec:
    """The run with its vocabulary padded as Megatron-LM pads it for ``layout.tp``."""
    if vocab_divisible_by is None:
        return run
    vocab = padded_vocab_size(run.model.vocab_size, layout.tp, vocab_divisible_by)
    return replace(run, model=replace(run.model, vocab_size=vocab))


def plan_layout(run: RunSpec, layout: Layout, cluster: Cluster, utilisation: float = None,
                vocab_divisible_by: Optional[int] = 128) -> Plan:
    """Memory and time of one layout."""
    if layout.world_size != cluster.num_gpus:
        raise ValueError(
            f"layout uses {layout.world_size} GPUs (tp*pp*cp*dp) but the cluster has {cluster.num_gpus}"
        )
    if layout.pp > 1 and run.method.mode != "none" and layout.num_microbatches < layout.pp:
        raise ValueError(
            f"{layout.num_microbatches} microbatches for {layout.pp} pipeline stages: the looped pipeline "
            "needs at least one microbatch per stage; raise the global batch or lower the micro batch"
        )
    padded = run_for_layout(run, layout, vocab_divisible_by)
    return Plan(
        run=padded, layout=layout, memory=plan_memory(padded, layout),
        time=predict_step_time(padded, layout, cluster, utilisation),
        memory_limit=cluster.memory_gib * GIB * USABLE_FRACTION,
    )


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(run: RunSpec, cluster: Cluster, micro_batch_sizes=(1, 2)) -> Iterator[Layout]:
    model, n = run.model, cluster.num_gpus
    multi_pass = run.method.mode != "none"
    longest_pass = run.seq_length * (run.method.num_latent_thoughts + 1 if run.method.mode == "latent" else 1)
    for tp in _divisors(min(cluster.gpus_per_node, n)):
        if model.num_attention_heads % tp or model.num_query_groups % tp or run.seq_length % tp:
            continue
        for pp in _divisors(model.num_layers):
            for cp in (1, 2, 4, 8):
                if n % (tp * pp * cp):
                    continue
                if cp > 1 and (run.seq_length % (2 * cp) or longest_pass // cp < MIN_SLOTS_PER_CP_RANK):
                    continue
                dp = n // (tp * pp * cp)
                for mb in micro_batch_sizes:
                    if run.global_batch_size % (dp * mb):
                        continue
                    m = run.global_batch_size // (dp * mb)
                    if pp > 1 and (m < pp or (multi_pass and m % pp)):
                        continue
                    for recompute in RECOMPUTE_CHOICES:
                        yield Layout(tp=tp, pp=pp, cp=cp, dp=dp, sequence_parallel=True, recompute=recompute,
                                     distributed_optimizer=True, micro_batch_size=mb, num_microbatches=m)


def search_layouts(run: RunSpec, cluster: Cluster, utilisation: float = None, top: int = 10) -> List[Plan]:
    """Layouts that fit, fastest first.

    Layouts at or above 1/1.005 of the fastest speed form one tie group (the model cannot tell
    them apart), ordered by simplicity: least model parallelism (tp*pp*cp), no recompute, less
    memory. The rest follow, fastest first.
    """
    plans = [plan_layout(run, layout, cluster, utilisation) for layout in candidate_layouts(run, cluster)]
    fitting = [plan for plan in plans if plan.fits]
    if not fitting:
        return []
    fastest = max(plan.time.tokens_per_s for plan in fitting)

    def rank(plan: Plan):
        layout = plan.layout
        simplicity = (layout.tp * layout.pp * layout.cp, layout.recompute != "none", plan.memory.total)
        if plan.time.tokens_per_s >= fastest / TIE_TOLERANCE:
            return (0, 0.0, *simplicity)
        return (1, -plan.time.tokens_per_s, *simplicity)

    fitting.sort(key=rank)
    return fitting[:top]
