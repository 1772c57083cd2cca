"""Plain-text reports of plans (the CLI's output)."""

from __future__ import annotations

from typing import List

from megatron_ponder.planning.layouts import Plan
from megatron_ponder.planning.memory import GIB


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:8.2f} GiB"


def describe_plan(plan: Plan, utilisation_note: str) -> str:
    """Memory, FLOPs, communication and time of one layout, one item per line."""
    run, layout, mem, t = plan.run, plan.layout, plan.memory, plan.time
    lines = [
        f"model     {run.model.num_layers} layers, h={run.model.hidden_size}, heads={run.model.num_attention_heads}"
        f"/{run.model.num_query_groups} groups, ffn={run.model.ffn_hidden_size}, vocab={run.model.vocab_size}",
        f"method    {run.method.describe()}, L={run.seq_length}, global batch {run.global_batch_size}, "
        f"{run.precision.name} ({run.precision.kernels} kernels)",
        f"layout    {layout.describe()} on {layout.world_size} GPUs",
        f"memory per GPU (pipeline stage {mem.stage}, {mem.params / 1e6:.1f} M params on the rank):",
        f"  weights              {_gib(mem.weights)}",
        f"  grads (fp32)         {_gib(mem.grads)}",
        f"  optimizer            {_gib(mem.optimizer)}   (without distributed optimizer {_gib(mem.optimizer_without_distributed).strip()})",
        "  activations / pass   " + ", ".join(f"{b / GIB:.2f}" for b in mem.activations_per_pass) + " GiB (one microbatch)",
        f"  activations peak     {_gib(mem.activations)}   (schedule in flight, recompute working set)",
        f"  backward temporaries {_gib(mem.temporaries)}   (a weight gradient before it joins the fp32 grad, "
        "unfused attention's s x s gradients; local kernels)",
        f"  total                {_gib(mem.total)}   of {plan.memory_limit / GIB:.1f} GiB usable -> "
        + ("fits" if plan.fits else "DOES NOT FIT"),
        f"FLOPs per step         {t.flops:.3e} executed, {t.model_flops:.3e} model",
        "communication per step (bytes one rank sends, ring algorithms; link time before overlap):",
    ]
    for group, seconds in sorted(t.comm_s.items()):
        lines.append(f"  {group:3s} {t.comm_bytes[group] / GIB:10.2f} GiB {seconds * 1e3:10.1f} ms")
    lines += [
        f"pipeline bubble        {t.bubble:.1%}",
        f"step time              {t.step_s:.3f} s  (compute {t.compute_s:.3f} s at {utilisation_note})",
        f"throughput             {t.tokens_per_s:,.0f} tokens/s, MFU {t.mfu:.1%}",
    ]
    return "\n".join(lines)


def describe_search(plans: List[Plan]) -> str:
    """Ranked table of layouts that fit."""
    if not plans:
        return "no layout fits: more GPUs, a smaller micro batch or sequence, or FP8 may help"
    header = f"{'rank':>4}  {'layout':44s} {'mem/GPU':>9} {'bubble':>7} {'step s':>8} {'tokens/s':>12} {'MFU':>6}"
    rows = [header]
    for index, plan in enumerate(plans, 1):
        rows.append(
            f"{index:4d}  {plan.layout.describe():44s} {plan.memory.total / GIB:7.1f}Gi {plan.time.bubble:7.1%} "
            f"{plan.time.step_s:8.3f} {plan.time.tokens_per_s:12,.0f} {plan.time.mfu:6.1%}"
        )
    return "\n".join(rows)
