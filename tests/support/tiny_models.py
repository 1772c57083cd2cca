"""Tiny models shared by the tests: a PonderGPTModel and the plain-PyTorch reference, same weights.

`init_method_std` is large on purpose: with Megatron's 0.02 the logits of a random model are
nearly uniform and pondering's feedback (a near-uniform mix of embeddings) would barely move the
loss, so a wrong mixing could pass unnoticed.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from megatron_ponder.model.architectures import build_ponder_gpt, get_style, make_ponder_config
from megatron_ponder.model.ponder_gpt import PonderGPTModel
from megatron_ponder.variants import MODES
from reference.megatron_weights import load_megatron_state_dict
from reference.model import ReferenceArch, ReferenceModel

VOCAB = 64
MAX_POSITIONS = 32
# PonderConfig fields of the four method variants the tests parametrise (megatron_ponder.variants).
MODE_FIELDS = MODES
SIZES: Dict[str, Dict] = {
    # RMSNorm, SwiGLU, RoPE, GQA (4 heads, 2 groups), untied.
    "llama": dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=48),
    # LayerNorm, GeLU, learned absolute positions, tied.
    "gpt2": dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=4, ffn_hidden_size=64),
    # LayerNorm, GeLU, biases, RoPE on a quarter of each head (head_dim 16: 4 dims), parallel
    # residual, untied.
    "neox": dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=4, ffn_hidden_size=96),
}


def tiny_config(style: str, **fields):
    base = dict(
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.15,
        **SIZES[style],
    )
    return make_ponder_config(style, **{**base, **fields})


def tiny_model(style: str, seed: int = 0, tied: Optional[bool] = None, **fields) -> PonderGPTModel:
    """A tiny PonderGPTModel for this rank's pipeline stage; norm weights and biases are
    randomised so no mapping error can hide. ``tied`` overrides the style's embedding tying."""
    torch.manual_seed(seed)
    model = build_ponder_gpt(
        tiny_config(style, **fields), style, VOCAB, MAX_POSITIONS, share_embeddings_and_output_weights=tied,
        transformer_impl="local",  # the reference weight map is the local spec's (also on GPU machines)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def reference_arch(style: str) -> ReferenceArch:
    size = SIZES[style]
    chosen = get_style(style)
    return ReferenceArch(
        vocab_size=VOCAB,
        hidden_size=size["hidden_size"],
        num_layers=size["num_layers"],
        num_heads=size["num_attention_heads"],
        num_query_groups=size["num_query_groups"],
        ffn_hidden_size=size["ffn_hidden_size"],
        normalization=chosen.config_fields["normalization"],
        activation="swiglu" if chosen.config_fields.get("gated_linear_unit") else "gelu",
        position_embedding=chosen.position_embedding_type,
        max_positions=MAX_POSITIONS,
        tied_embeddings=chosen.share_embeddings_and_output_weights,
        bias=chosen.config_fields["add_bias_linear"],
        rotary_percent=chosen.rotary_percent,
        parallel_residual=chosen.parallel_residual,
    )


def reference_copy(model: PonderGPTModel, style: str) -> ReferenceModel:
    """The reference model holding ``model``'s weights."""
    arch = reference_arch(style)
    reference = ReferenceModel(arch)
    load_megatron_state_dict(reference, model.state_dict(), arch)
    return reference


def gradients_in_reference_layout(model: PonderGPTModel, style: str) -> Dict[str, torch.Tensor]:
    """Megatron gradients renamed/re-laid-out as the reference's parameters."""
    arch = reference_arch(style)
    holder = ReferenceModel(arch)
    grads = {name: param.grad for name, param in model.named_parameters()}
    load_megatron_state_dict(holder, grads, arch)
    return dict(holder.named_parameters())


def random_batch(batch: int, length: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens, labels, position_ids, each [b, L]."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length + 1), generator=generator)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), torch.arange(length).expand(batch, -1)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))
