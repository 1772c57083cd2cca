"""Architecture styles (LLaMA, GPT-2, GPT-NeoX) as plain Megatron config, and the model builder.

A style is the part of a model that is not its size: norm, MLP activation, biases, position
embedding, tied or untied output layer, sequential or parallel residual. Everything maps onto
stock Megatron-Core options, except GPT-NeoX's parallel residual, which is a TransformerLayer
subclass (:mod:`megatron_ponder.model.neox_layer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_ponder.config import PonderConfig
from megatron_ponder.model.paper_init import INIT_STYLES, paper_init_fields
from megatron_ponder.model.ponder_gpt import PonderGPTModel
from megatron_ponder.model.specs import get_block_spec, resolve_transformer_impl
from megatron_ponder.runtime.kernels import torch_compile_available


def tanh_gelu(x):
    """GeLU with the tanh approximation: GPT-2's ``gelu_new`` (``--openai-gelu``)."""
    return F.gelu(x, approximate="tanh")


@dataclass(frozen=True)
class ArchitectureStyle:
    """TransformerConfig fields plus the GPTModel arguments and layer choice that make a style."""

    config_fields: Dict[str, Any] = field(default_factory=dict)
    position_embedding_type: str = "learned_absolute"
    share_embeddings_and_output_weights: bool = True
    rotary_percent: float = 1.0
    """Fraction of each head's dimensions that RoPE rotates (GPT-NeoX: the first quarter)."""
    parallel_residual: bool = False
    """``x + attn(ln1 x) + mlp(ln2 x)`` (GPT-NeoX) instead of the sequential pre-norm residual."""


ARCHITECTURE_STYLES: Dict[str, ArchitectureStyle] = {
    # RMSNorm, SwiGLU, RoPE, no biases, untied embeddings (GQA: set num_query_groups).
    "llama": ArchitectureStyle(
        config_fields=dict(
            normalization="RMSNorm",
            gated_linear_unit=True,
            activation_func=F.silu,
            add_bias_linear=False,
            # Megatron's fused SwiGLU (megatron.core.fusions.fused_bias_swiglu, also on CPU): it
            # saves only fc1's output for backward, not also silu's output and the two halves.
            # Only where torch.compile can build it (make_ponder_config).
            bias_activation_fusion=True,
        ),
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    ),
    # LayerNorm, GeLU MLP with biases, learned absolute positions, tied embeddings.
    "gpt2": ArchitectureStyle(
        config_fields=dict(normalization="LayerNorm", activation_func=F.gelu, add_bias_linear=True),
        position_embedding_type="learned_absolute",
        share_embeddings_and_output_weights=True,
    ),
    # GPT-NeoX / Pythia: LayerNorm, GeLU MLP, biases everywhere (QKV included), RoPE on the first
    # 25% of each head's dimensions, parallel attention + MLP residual, untied embeddings.
    "neox": ArchitectureStyle(
        config_fields=dict(normalization="LayerNorm", activation_func=F.gelu, add_bias_linear=True),
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
        rotary_percent=0.25,
        parallel_residual=True,
    ),
}


def get_style(name: str) -> ArchitectureStyle:
    if name not in ARCHITECTURE_STYLES:
        raise ValueError(
            f"unknown architecture style {name!r}; choose one of {sorted(ARCHITECTURE_STYLES)}"
        )
    return ARCHITECTURE_STYLES[name]


def make_ponder_config(style: str, init_style: str = "megatron", **fields) -> PonderConfig:
    """PonderConfig for ``style``; ``fields`` (sizes, mode, parallelism...) override the style.

    ``init_style``: ``megatron`` (Megatron's normal init, ``init_method_std``) or ``ponderlm``
    (the papers' truncated-normal init, :mod:`megatron_ponder.model.paper_init`).
    """
    if init_style not in INIT_STYLES:
        raise ValueError(f"unknown init_style {init_style!r}; choose one of {', '.join(INIT_STYLES)}")
    fields = {**get_style(style).config_fields, **fields}
    if fields.get("bias_activation_fusion") and not torch_compile_available():
        # Megatron compiles the fused activation with torch.compile; without a backend here (a CPU
        # machine without a C++ compiler) the first forward would fail: the unfused activation
        # computes the same function, keeping two more [s, b, ffn] tensors for backward.
        fields["bias_activation_fusion"] = False
    if init_style == "ponderlm":
        defaults = {f.name: f.default for f in dataclasses.fields(PonderConfig)}
        fields.update(paper_init_fields(style, fields, defaults))
    return PonderConfig(**fields)


def build_ponder_gpt(
    config: PonderConfig,
    style: str,
    vocab_size: int,
    max_sequence_length: int,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
    share_embeddings_and_output_weights: Optional[bool] = None,
    transformer_impl: str = "auto",
    rotary_percent: Optional[float] = None,
    rotary_base: int = 10000,
) -> PonderGPTModel:
    """A PonderGPTModel of ``style`` for this rank's pipeline stage.

    ``transformer_impl``: ``auto`` (Transformer Engine layers when TE is usable here, i.e. on a
    CUDA machine with TE installed; Megatron's local layers otherwise), ``local`` or
    ``transformer_engine`` (see :func:`megatron_ponder.model.specs.get_block_spec`).

    ``max_sequence_length`` counts tokens, not slots: thought slots reuse their token's position.
    ``pre_process``/``post_process`` default to whether this rank is the first/last pipeline
    stage; ``share_embeddings_and_output_weights`` and ``rotary_percent`` default to the style's
    choice; ``rotary_base`` is RoPE's theta (LLaMA-2: 10000, SmolLM2: 100000).
    """
    chosen = get_style(style)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    if share_embeddings_and_output_weights is None:
        share_embeddings_and_output_weights = chosen.share_embeddings_and_output_weights
    if rotary_percent is None:
        rotary_percent = chosen.rotary_percent
    # The config names the layers really built (TransformerConfig's meaning of the field; its
    # default says transformer_engine whatever is built): the model reads it to refuse masks that
    # TE's causal attention would drop (specs.check_attention_mask_supported).
    config.transformer_impl = resolve_transformer_impl(transformer_impl)
    return PonderGPTModel(
        config,
        get_block_spec(config, vp_stage=vp_stage, transformer_impl=transformer_impl,
                       parallel_residual=chosen.parallel_residual),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        position_embedding_type=chosen.position_embedding_type,
        rotary_percent=rotary_percent,
        rotary_base=rotary_base,
        vp_stage=vp_stage,
    )
