"""Layer specs: which Megatron modules build each transformer layer.

* :func:`get_local_block_spec` — Megatron-Core's local (non-Transformer-Engine) GPT layer, with a
  torch norm that also works under sequence parallelism, and a core attention chosen by
  ``config.local_attention``: ``sdpa`` (default, :mod:`megatron_ponder.model.sdpa_attention`) or
  ``unfused`` (Megatron's ``DotProductAttention``); when context parallelism is on, a core
  attention that implements it, on the same kernel (CPU runs, tests, laptops, GPUs without TE).
* :func:`get_transformer_engine_block_spec` — Megatron-Core's Transformer Engine GPT layer
  (fused norm+linear, TE attention with its own context parallelism, FP8-capable GEMMs) (GPU).
* :func:`get_block_spec` — picks one: ``auto`` takes Transformer Engine when it is usable here
  (CUDA present and ``transformer_engine.pytorch`` imports), the local spec otherwise. TE is
  imported only on that path, never on a machine without CUDA.

With ``parallel_residual=True`` either spec builds GPT-NeoX's layer (``x + attn(ln1 x) + mlp(ln2 x)``,
:mod:`megatron_ponder.model.neox_layer`), same modules and weights.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ponder.model.context_parallel_attention import ContextParallelLocalAttention
from megatron_ponder.model.neox_layer import ParallelResidualTransformerLayer
from megatron_ponder.model.sdpa_attention import SDPAttention
from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason

TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")


class SequenceParallelTorchNorm:
    """torch ``LayerNorm``/``RMSNorm`` built from a Megatron config, usable under sequence parallelism.

    Megatron's ``WrappedTorchNorm`` refuses ``sequence_parallel=True``. The norm itself is
    per-token, so it is correct on a sequence shard; what SP needs is that its (replicated)
    parameters are tagged ``sequence_parallel`` so ``finalize_model_grads`` all-reduces their
    gradients over the tensor-parallel group.
    """

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        if config.layernorm_zero_centered_gamma:
            raise ValueError(
                "layernorm_zero_centered_gamma needs the Transformer Engine spec; "
                "the local spec uses plain torch norms"
            )
        norm_classes = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.normalization not in norm_classes:
            raise ValueError(
                f"normalization={config.normalization!r} is not supported by the local spec; "
                f"use one of {sorted(norm_classes)}"
            )
        # Placed by Megatron's rule for its own layers: on the current GPU unless
        # use_cpu_initialization (a model half on the CPU would fail at its first forward).
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        norm = norm_classes[config.normalization](
            normalized_shape=hidden_size, eps=eps, dtype=config.params_dtype, device=device
        )
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def get_local_block_spec(
    config: TransformerConfig, vp_stage: Optional[int] = None, parallel_residual: bool = False
) -> TransformerBlockSubmodules:
    """Megatron's local GPT layer spec for ``config`` with SP-capable norms, as a block spec.

    Args:
        config: the model config (normalization, qk_layernorm, local_attention and pipeline
            layout are read).
        vp_stage: virtual pipeline stage, for the number of layers this stage builds.
        parallel_residual: GPT-NeoX layers (attention and MLP both read the layer input).
    """
    layer_spec = copy.deepcopy(
        get_gpt_layer_local_spec(
            normalization=config.normalization, qk_layernorm=config.qk_layernorm
        )
    )
    if parallel_residual:
        layer_spec.module = ParallelResidualTransformerLayer
    layer = layer_spec.submodules
    layer.input_layernorm = SequenceParallelTorchNorm
    layer.pre_mlp_layernorm = SequenceParallelTorchNorm
    attention = layer.self_attention.submodules
    for name in ("q_layernorm", "k_layernorm"):
        if getattr(attention, name, IdentityOp) is not IdentityOp:
            setattr(attention, name, SequenceParallelTorchNorm)
    kernel = getattr(config, "local_attention", "sdpa")
    if config.context_parallel_size > 1:
        # Megatron's local DotProductAttention refuses CP; this one all-gathers K/V over CP.
        attention.core_attention = ModuleSpec(module=ContextParallelLocalAttention, params={"kernel": kernel})
    elif kernel == "sdpa":
        attention.core_attention = SDPAttention
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec] * get_num_layers_to_build(config, vp_stage=vp_stage),
        layer_norm=SequenceParallelTorchNorm,
    )


def get_transformer_engine_block_spec(
    config: TransformerConfig, vp_stage: Optional[int] = None, parallel_residual: bool = False
) -> TransformerBlockSubmodules:
    """Megatron's Transformer Engine GPT layer spec for ``config``, as a block spec (GPU only).

    TE's fused LayerNorm/RMSNorm+linear reads ``config.normalization``; its attention handles
    sequence and context parallelism itself, so no local replacement is needed here.
    """
    reason = transformer_engine_unusable_reason()
    if reason is not None:
        raise RuntimeError(f"the Transformer Engine layer spec is unavailable: {reason}")
    from megatron.core.extensions.transformer_engine import TENorm
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    layer_spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    if getattr(config, "reset_attention_mask", False):
        layer_spec = document_mask_attention(layer_spec, config)
    if parallel_residual:
        # TE fuses ln1 into linear_qkv and ln2 into linear_fc1 (the separate norms are identities),
        # so handing both sub-blocks the layer input x is exactly the parallel residual.
        layer_spec = copy.deepcopy(layer_spec)
        layer_spec.module = ParallelResidualTransformerLayer
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec] * get_num_layers_to_build(config, vp_stage=vp_stage),
        layer_norm=TENorm,
    )


def document_mask_attention(layer_spec: ModuleSpec, config: TransformerConfig) -> ModuleSpec:
    """The TE layer spec with a self-attention that applies an explicit (document) mask.

    Megatron's GPT spec builds TE's attention with ``attn_mask_type=causal``, under which TE
    ignores ``attention_mask``. ``arbitrary`` makes TE apply the mask as given ([b|1, 1, sq, sk],
    True = masked; the causal part is in the mask). TE's own context parallelism takes no
    arbitrary mask, so under CP the core attention is the local spec's
    :class:`ContextParallelLocalAttention` (SDPA on the same mask, keys/values all-gathered over CP).
    """
    from megatron.core.transformer.enums import AttnMaskType

    layer_spec = copy.deepcopy(layer_spec)
    self_attention = layer_spec.submodules.self_attention
    self_attention.params = {**(self_attention.params or {}), "attn_mask_type": AttnMaskType.arbitrary}
    if config.context_parallel_size > 1:
        self_attention.submodules.core_attention = ModuleSpec(
            module=ContextParallelLocalAttention, params={"kernel": "sdpa"}
        )
    return layer_spec


def check_attention_mask_supported(config: TransformerConfig, attention_mask: Optional[torch.Tensor]) -> None:
    """Refuse an attention mask that the layers would silently ignore, or a missing one they need.

    The Transformer Engine spec is built with ``attn_mask_type=causal`` (Megatron's GPT spec),
    and TE's attention ignores ``attention_mask`` under a causal mask type: a document or padding
    mask would be dropped without a word. Built for document masks (``config.reset_attention_mask``,
    :func:`document_mask_attention`) it applies the mask, and then needs one. The local spec
    applies any mask it is given.
    """
    if config.transformer_impl != "transformer_engine":
        return
    masked = getattr(config, "reset_attention_mask", False)
    if attention_mask is not None and not masked:
        raise ValueError(
            "the Transformer Engine layer spec attends causally and would ignore attention_mask: "
            "pass attention_mask=None, build with reset_attention_mask=True (--reset-attention-mask) "
            "to apply it, or with transformer_impl='local' (--transformer-impl local)"
        )
    if attention_mask is None and masked:
        raise ValueError(
            "the Transformer Engine layer spec was built for document masks (reset_attention_mask) "
            "and needs attention_mask: pass the batch's document mask [b, 1, L, L]"
        )


def resolve_transformer_impl(transformer_impl: str = "auto") -> str:
    """``auto`` -> ``transformer_engine`` when TE is usable here, else ``local``."""
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(
            f"unknown transformer_impl {transformer_impl!r}; choose one of {', '.join(TRANSFORMER_IMPLS)}"
        )
    if transformer_impl == "auto":
        return "transformer_engine" if transformer_engine_unusable_reason() is None else "local"
    return transformer_impl


def get_block_spec(
    config: TransformerConfig, vp_stage: Optional[int] = None, transformer_impl: str = "auto",
    parallel_residual: bool = False,
) -> TransformerBlockSubmodules:
    """The block spec of ``transformer_impl`` (``auto``, ``local`` or ``transformer_engine``).

    ``parallel_residual``: GPT-NeoX layers (attention and MLP both read the layer input).

    FP8 (``config.fp8``) runs in Transformer Engine's GEMMs only, so it needs the TE spec.
    """
    impl = resolve_transformer_impl(transformer_impl)
    if config.fp8 and impl != "transformer_engine":
        reason = transformer_engine_unusable_reason() or "the local layer spec was requested"
        raise ValueError(f"fp8={config.fp8!r} needs the Transformer Engine layer spec: {reason}")
    if impl == "transformer_engine":
        return get_transformer_engine_block_spec(config, vp_stage, parallel_residual)
    return get_local_block_spec(config, vp_stage, parallel_residual)
