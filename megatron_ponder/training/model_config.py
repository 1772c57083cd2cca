"""The PonderConfig a run's flags describe: fields by name, as Megatron-LM builds its config.

Every flag whose destination is a field of :class:`~megatron_ponder.config.PonderConfig` (its
own fields and Megatron's ``TransformerConfig``'s) sets that field: the rule of Megatron-LM's
``core_transformer_config_from_args``. So a new method field needs a flag of the same name and
nothing here. What remains below is derived, not copied: the few fields whose flag keeps
Megatron-LM's own spelling (``--norm-epsilon``, ``--openai-gelu``), the precision dtypes, the
recompute options that only apply to one granularity, and the fixed choices of this entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict

import torch


def config_fields_from_args(config_class, args: argparse.Namespace) -> Dict[str, Any]:
    """``{field: args.<field>}`` for every init field of the dataclass ``config_class`` that
    ``args`` has under the same name."""
    return {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if field.init and hasattr(args, field.name)
    }


def _derived_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The fields that do not come from a flag of their own name."""
    from megatron_ponder.model.architectures import tanh_gelu
    from megatron_ponder.model.specs import resolve_transformer_impl
    from megatron_ponder.training.fusions import FUSION_FLAGS, blocked_fusions, fusions_with_kernels

    transformer_impl = resolve_transformer_impl(args.transformer_impl)
    # Runs saved before a flag existed lack it: those defaults (fusions asked for, GPU init).
    requested_fusions = {field: getattr(args, field, True) for field in FUSION_FLAGS}
    for field in blocked_fusions(args, transformer_impl):  # pretrain logs the reasons
        requested_fusions[field] = False
    derived: Dict[str, Any] = dict(
        layernorm_epsilon=args.norm_epsilon,  # Megatron-LM spells the flag --norm-epsilon too
        use_cpu_initialization=getattr(args, "use_cpu_initialization", False) or not torch.cuda.is_available(),
        calculate_per_token_loss=True,  # the training step returns per-token loss sums
        ponder_vocab_size=args.tokenizer_vocab_size,  # rows past it are vocabulary padding
        # The layers actually built ("auto" resolved), as TransformerConfig documents the field.
        transformer_impl=transformer_impl,
        **fusions_with_kernels(requested_fusions, torch.cuda.is_available(), transformer_impl),
    )
    if args.openai_gelu:
        derived["activation_func"] = tanh_gelu
    if args.bf16:
        derived.update(params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    else:
        derived["pipeline_dtype"] = torch.float32
    if args.fp8 is not None:
        derived["fp8_amax_compute_algo"] = "max"
    if args.recompute_granularity != "full":
        # Megatron allows a recompute method and layer count with full recompute only.
        derived.update(recompute_method=None, recompute_num_layers=None)
    return derived


def _init_style(args: argparse.Namespace) -> str:
    """``--init-style``; the paper init sets the std itself, so an explicit ``--init-method-std`` is refused."""
    from megatron_ponder.training.arguments import ArgumentError

    init_style = getattr(args, "init_style", "megatron")  # runs saved before the flag existed
    if init_style != "megatron" and args.init_method_std != 0.02:  # 0.02: the flag's default
        raise ArgumentError(f"--init-method-std {args.init_method_std} with --init-style {init_style}: the paper "
                            "init sets the std itself (sqrt(2/(5h))); drop one of the two flags")
    return init_style


def model_config(args: argparse.Namespace):
    """The PonderConfig the run's flags describe (also used by the HF converters and benchmarks).

    ``args`` must hold ``tokenizer_vocab_size`` (set by :func:`megatron_ponder.training.build.prepare_data`).
    """
    from megatron_ponder.config import PonderConfig
    from megatron_ponder.model.architectures import make_ponder_config

    init_style = _init_style(args)
    fields = {**config_fields_from_args(PonderConfig, args), **_derived_fields(args)}
    if init_style != "megatron":
        fields.pop("init_method_std")  # the paper init derives it from the hidden size
    return make_ponder_config(args.architecture, init_style=init_style, **fields)
