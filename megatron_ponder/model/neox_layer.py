"""GPT-NeoX's parallel residual as a Megatron-Core TransformerLayer.

A GPT-NeoX (Pythia) layer reads both sub-blocks from the same input::

    out = x + attn(ln1(x)) + mlp(ln2(x))

instead of the sequential ``y = x + attn(ln1(x)); out = y + mlp(ln2(y))``. Megatron-Core 0.16.1
has no option for it (its TransformerLayer always feeds the MLP the attention output), so this
subclass reorders the stock pieces: ``_forward_attention`` (ln1, attention, bias-dropout-add with
the residual x), the stock pre-MLP norm applied to x, the MLP, and ``_forward_post_mlp``
(bias-dropout-add onto the attention branch's output). Weights, sharding and state-dict keys are
exactly those of the stock layer.
"""

from __future__ import annotations

import functools

from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_layer import TransformerLayer


class ParallelResidualTransformerLayer(TransformerLayer):
    """TransformerLayer computing ``x + attn(ln1(x)) + mlp(ln2(x))`` ([s, b, h] -> [s, b, h])."""

    def forward(self, hidden_states, *args, **kwargs):
        kwargs.pop("dynamic_inference_decode_only", None)
        padding_mask = kwargs.get("padding_mask", None)
        # ln2 reads the layer input x (the sequential layer would give it x + attn).
        mlp_input = self._forward_pre_mlp_layernorm(hidden_states)
        attended, context = self._forward_attention(hidden_states, *args, **kwargs)  # x + attn(ln1 x)
        if self.recompute_mlp:
            mlp_output_with_bias = tensor_parallel.checkpoint(
                functools.partial(self.mlp, padding_mask=padding_mask), False, mlp_input
            )
        else:
            mlp_output_with_bias = self.mlp(mlp_input, padding_mask=padding_mask)
        return self._forward_post_mlp(mlp_output_with_bias, attended), context
