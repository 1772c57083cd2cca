"""Megatron run arguments <-> stock Hugging Face configs (LlamaConfig, GPT2Config, GPTNeoXConfig).

The Megatron side is the training entry point's flags (``argparse.Namespace`` as saved in every
checkpoint under ``args``), so an exported model is described by exactly what trained it and an
imported one by the flags that continue it. Anything either side cannot express exactly (RoPE
scaling, biases LLaMA-style models do not have, GPT-NeoX's sequential residual...) is refused with
a one-line error instead of converting to a different model.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Dict

from megatron_ponder.hf import require
from megatron_ponder.hf.weight_mapping import ModelShape
from megatron_ponder.model.architectures import get_style

HF_MODEL_TYPES = {"llama": "llama", "gpt2": "gpt2", "neox": "gpt_neox"}
STYLE_OF_MODEL_TYPE = {v: k for k, v in HF_MODEL_TYPES.items()}


class ConversionError(ValueError):
    """A model that has no exact counterpart on the other side (message names what and the fix)."""


def is_tied(args: argparse.Namespace) -> bool:
    tied = getattr(args, "tie_embeddings", None)
    return get_style(args.architecture).share_embeddings_and_output_weights if tied is None else bool(tied)


def rotary_percent(args: argparse.Namespace) -> float:
    value = getattr(args, "rotary_percent", None)
    return get_style(args.architecture).rotary_percent if value is None else float(value)


def real_vocab_size(args: argparse.Namespace) -> int:
    """Rows of the model that are tokens: the run's tokenizer vocabulary (else the whole table)."""
    return int(getattr(args, "tokenizer_vocab_size", None) or args.vocab_size)


def model_shape(args: argparse.Namespace) -> ModelShape:
    return ModelShape(
        style=args.architecture,
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups or args.num_attention_heads,
        vocab_size=real_vocab_size(args),
        padded_vocab_size=args.vocab_size,
        tied=is_tied(args),
    )


# ---------------------------------------------------------------------------- Megatron -> HF
def hf_config_from_args(args: argparse.Namespace):
    """The stock HF config of the model ``args`` describe (dropout 0: the entry point trains without)."""
    transformers = require("transformers")
    style, eps = args.architecture, getattr(args, "norm_epsilon", 1e-5)
    theta = float(getattr(args, "rotary_base", 10000))
    common = dict(vocab_size=real_vocab_size(args), tie_word_embeddings=is_tied(args))
    if style == "llama" and rotary_percent(args) != 1.0:
        raise ConversionError(f"--rotary-percent {rotary_percent(args)} has no LlamaConfig equivalent (HF Llama "
                              "rotates whole heads): only runs with full rotary export as llama")
    if style == "llama":
        return transformers.LlamaConfig(
            hidden_size=args.hidden_size,
            intermediate_size=args.ffn_hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_query_groups or args.num_attention_heads,
            head_dim=args.hidden_size // args.num_attention_heads,
            hidden_act="silu",
            max_position_embeddings=args.max_position_embeddings,
            rms_norm_eps=eps,
            rope_parameters={"rope_type": "default", "rope_theta": theta},
            attention_bias=False,
            mlp_bias=False,
            **common,
        )
    if (args.num_query_groups or args.num_attention_heads) != args.num_attention_heads:
        raise ConversionError(f"{style} has no grouped-query attention: num_query_groups must equal the heads")
    if style == "gpt2":
        return transformers.GPT2Config(
            n_embd=args.hidden_size,
            n_layer=args.num_layers,
            n_head=args.num_attention_heads,
            n_inner=args.ffn_hidden_size,
            n_positions=args.max_position_embeddings,
            activation_function="gelu_new" if getattr(args, "openai_gelu", False) else "gelu",
            layer_norm_epsilon=eps,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **common,
        )
    if style == "neox":
        return transformers.GPTNeoXConfig(
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_attention_heads,
            intermediate_size=args.ffn_hidden_size,
            hidden_act="gelu_new" if getattr(args, "openai_gelu", False) else "gelu",
            max_position_embeddings=args.max_position_embeddings,
            layer_norm_eps=eps,
            rope_parameters={"rope_type": "default", "rope_theta": theta,
                             "partial_rotary_factor": rotary_percent(args)},
            use_parallel_residual=True,
            attention_bias=True,
            hidden_dropout=0.0, attention_dropout=0.0,
            **common,
        )
    raise ConversionError(f"no Hugging Face counterpart for architecture {style!r}")


# ---------------------------------------------------------------------------- HF -> Megatron
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are --openai-gelu (tanh-approximated GeLU)


def _rope(config) -> Dict[str, Any]:
    """The config's RoPE parameters; refuses scaled RoPE and a theta --rotary-base cannot hold."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ConversionError(
            f"RoPE scaling {rope.get('rope_type')!r} has no Megatron counterpart here: only plain RoPE converts"
        )
    theta = rope.setdefault("rope_theta", 10000.0)
    if float(theta) != int(theta):
        raise ConversionError(f"rope_theta {theta} is not an integer, which --rotary-base needs")
    return rope


def megatron_flags_from_hf_config(
    config, tensor_model_parallel_size: int = 1, make_vocab_size_divisible_by: int = 128
) -> Dict[str, Any]:
    """Entry-point flags (argparse dests -> values) that build ``config``'s model in Megatron.

    ``vocab_size`` is padded to a multiple of ``make_vocab_size_divisible_by x TP`` as the
    entry point pads it; ``tokenizer_vocab_size`` is the real vocabulary.
    """
    model_type = config.model_type
    if model_type not in STYLE_OF_MODEL_TYPE:
        raise ConversionError(
            f"model_type {model_type!r} is not supported: import LlamaForCausalLM, GPT2LMHeadModel or "
            "GPTNeoXForCausalLM checkpoints"
        )
    style = STYLE_OF_MODEL_TYPE[model_type]
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    flags: Dict[str, Any] = dict(
        architecture=style,
        tokenizer_vocab_size=config.vocab_size,
        vocab_size=int(math.ceil(config.vocab_size / multiple) * multiple),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        # A pretrained model's embeddings have their own scale; latent mode's default (1/std,
        # for Megatron-initialised tables) would multiply them by ~50.
        input_embedding_scale=1.0,
    )
    if style == "llama":
        if config.attention_bias or getattr(config, "mlp_bias", False):
            raise ConversionError("LLaMA checkpoints with attention_bias/mlp_bias have no llama-style counterpart")
        if config.hidden_act != "silu":
            raise ConversionError(f"LLaMA hidden_act {config.hidden_act!r}: only silu (SwiGLU) converts")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head_dim * config.num_attention_heads != config.hidden_size:
            raise ConversionError("LLaMA head_dim x heads != hidden_size has no counterpart here")
        flags.update(
            num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_query_groups=config.num_key_value_heads or config.num_attention_heads,
            ffn_hidden_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
            norm_epsilon=float(config.rms_norm_eps), rotary_base=int(_rope(config).get("rope_theta", 10000)),
        )
    elif style == "gpt2":
        if config.activation_function not in ("gelu", *_TANH_GELUS):
            raise ConversionError(f"GPT-2 activation_function {config.activation_function!r} does not convert")
        if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
            raise ConversionError("GPT-2 attention scaling other than 1/sqrt(head_dim) does not convert")
        flags.update(
            num_layers=config.n_layer, hidden_size=config.n_embd, num_attention_heads=config.n_head,
            num_query_groups=config.n_head, ffn_hidden_size=config.n_inner or 4 * config.n_embd,
            max_position_embeddings=config.n_positions, norm_epsilon=float(config.layer_norm_epsilon),
            openai_gelu=config.activation_function in _TANH_GELUS,
        )
    else:
        if not config.use_parallel_residual:
            raise ConversionError("GPT-NeoX with use_parallel_residual=False has no neox-style counterpart")
        if config.hidden_act not in ("gelu", *_TANH_GELUS) or not getattr(config, "attention_bias", True):
            raise ConversionError("GPT-NeoX converts with a GeLU hidden_act and attention biases only")
        rope = _rope(config)
        flags.update(
            num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads, num_query_groups=config.num_attention_heads,
            ffn_hidden_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
            norm_epsilon=float(config.layer_norm_eps), rotary_base=int(rope.get("rope_theta", 10000)),
            rotary_percent=float(rope.get("partial_rotary_factor", 1.0)),
            openai_gelu=config.hidden_act != "gelu",
        )
    return flags


def flags_to_argv(flags: Dict[str, Any]) -> list:
    """Flag dict -> command-line words for ``python -m megatron_ponder.pretrain``."""
    argv = []
    for dest, value in flags.items():
        if dest == "tokenizer_vocab_size":
            continue  # set by the entry point from --tokenizer-model
        if dest == "tie_embeddings":
            argv.append("--tie-embeddings-and-output-weights" if value else "--untie-embeddings-and-output-weights")
        elif isinstance(value, bool):
            if value:
                argv.append("--" + dest.replace("_", "-"))
        else:
            argv += ["--" + dest.replace("_", "-"), str(value)]
    return argv
