"""FLOPs of one training step with every pass counted (for TFLOP/s and MFU in the logs).

Matrix multiplications only (as Megatron-LM counts them), attention scores over the full square.
Forward flops of one transformer pass over s slots, batch b, per layer:
    2*b*s*(h*(h + 2*kv) + h*h + m*h*f) + 4*b*s^2*h
with kv = query groups x head dim and m = 3 for gated MLPs (SwiGLU), 2 otherwise. Backward costs
twice the forward; full activation recompute adds one more forward of the layers.

The passes are the step's plan (:func:`megatron_ponder.model.passes.plan_passes`, the one the
model runs). A pass that builds no graph (the leading passes of ``--jacobi-grad-rounds`` /
``--ponder-grad-steps``: truncated backprop) runs its forward only: 1x its forward FLOPs instead
of 3x (4x for the layers under full recompute), and nothing of it is recomputed.
"""

from __future__ import annotations

from megatron_ponder.model.passes import PassKind, plan_passes


def _layers_forward(config, slots: int, batch: int) -> float:
    h = config.hidden_size
    kv = config.num_query_groups * config.kv_channels
    mlp = (3 if config.gated_linear_unit else 2) * h * config.ffn_hidden_size
    per_layer = 2 * batch * slots * (h * (h + 2 * kv) + h * h + mlp) + 4 * batch * slots * slots * h
    return config.num_layers * per_layer


def _output_forward(config, tokens: int, batch: int, vocab: int) -> float:
    return 2 * batch * tokens * config.hidden_size * vocab


def step_flops(config, seq_length: int, batch: int, vocab: int, jacobi_rounds: int) -> float:
    """Training FLOPs for ``batch`` samples of ``seq_length`` tokens in ``config.ponder_mode``.

    ``config``: a ``PonderConfig`` (or anything with its fields); ``ponder_grad_steps`` and
    ``jacobi_grad_rounds`` (absent: all) decide which passes run forward only.
    """
    L = seq_length
    mode = config.ponder_mode
    plan = plan_passes(
        mode,
        getattr(config, "ponder_steps", 0),
        getattr(config, "ponder_accumulate", True),
        getattr(config, "num_latent_thoughts", 0),
        jacobi_rounds if mode == "latent" else 0,
        getattr(config, "ponder_grad_steps", None),
        getattr(config, "jacobi_grad_rounds", None),
    )
    recompute_layers = 1.0 if config.recompute_granularity == "full" else 0.0
    topk = getattr(config, "ponder_topk", None)
    mixed_rows = vocab if topk is None else min(topk, vocab)
    total = 0.0
    for p in plan:
        layers = _layers_forward(config, p.slots_per_token * L, batch)
        other = 0.0
        if mode != "latent" or p.kind is PassKind.FINAL:
            # logits of every ponder pass (latent: at the last thought slots of the final pass only)
            other = _output_forward(config, L, batch, vocab)
        if p.kind is PassKind.PONDER_FEEDBACK:
            # the mixture p @ E (over K rows with top-K mixing: a weighted sum of K embedding rows)
            other += _output_forward(config, L, batch, mixed_rows)
        if p.builds_graph:
            total += (3.0 + recompute_layers) * layers + 3.0 * other
        else:
            total += layers + other
    return total
