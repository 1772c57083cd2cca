"""FLOPs of one training step with every pass counted (for TFLOP/s and MFU in the logs).

Matrix multiplications only (as Megatron-LM counts them), attention scores over the full square.
Forward flops of one transformer pass over s slots, batch b, per layer:
    2*b*s*(h*(h + 2*kv) + h*h + m*h*f) + 4*b*s^2*h
with kv = query groups x head dim and m = 3 for gated MLPs (SwiGLU), 2 otherwise. Backward costs
twice the forward; full activation recompute adds one more forward of the layers.
"""

from __future__ import annotations


def _layers_forward(config, slots: int, batch: int) -> float:
    h = config.hidden_size
    kv = config.num_query_groups * config.kv_channels
    mlp = (3 if config.gated_linear_unit else 2) * h * config.ffn_hidden_size
    per_layer = 2 * batch * slots * (h * (h + 2 * kv) + h * h + mlp) + 4 * batch * slots * slots * h
    return config.num_layers * per_layer


def _output_forward(config, tokens: int, batch: int, vocab: int) -> float:
    return 2 * batch * tokens * config.hidden_size * vocab


def step_flops(config, seq_length: int, batch: int, vocab: int, jacobi_rounds: int) -> float:
    """Training FLOPs for ``batch`` samples of ``seq_length`` tokens in ``config.ponder_mode``."""
    L = seq_length
    recompute_layers = 1.0 if config.recompute_granularity == "full" else 0.0
    layers = 0.0
    other = 0.0
    if config.ponder_mode == "ponder":
        passes = config.ponder_steps + 1
        layers = passes * _layers_forward(config, L, batch)
        # logits of every pass, plus the mixture p @ E of every feedback pass (over K rows with
        # top-K mixing, a weighted sum of K embedding rows per position)
        other = passes * _output_forward(config, L, batch, vocab)
        mixed_rows = vocab if config.ponder_topk is None else min(config.ponder_topk, vocab)
        other += config.ponder_steps * _output_forward(config, L, batch, mixed_rows)
    elif config.ponder_mode == "latent":
        n = config.num_latent_thoughts
        layers = sum(_layers_forward(config, k * L, batch) for k in range(1, n + 1))
        layers += (jacobi_rounds + 1) * _layers_forward(config, (n + 1) * L, batch)
        other = _output_forward(config, L, batch, vocab)  # logits at the last thought slots only
    else:
        layers = _layers_forward(config, L, batch)
        other = _output_forward(config, L, batch, vocab)
    return (3.0 + recompute_layers) * layers + 3.0 * other
