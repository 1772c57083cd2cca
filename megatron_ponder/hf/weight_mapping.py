"""Full (unsharded, TP = PP = 1) Megatron state dict <-> stock Hugging Face state dict.

Three stock classes, one per architecture style:

=========  ============================  ==========================================================
style      Hugging Face class            layout differences handled here
=========  ============================  ==========================================================
llama      ``LlamaForCausalLM``          QKV: Megatron fuses q/k/v per query group (below), HF keeps
                                         ``q_proj``/``k_proj``/``v_proj``; SwiGLU: Megatron's
                                         ``linear_fc1`` is ``[gate; up]``, HF has ``gate_proj`` and
                                         ``up_proj``. Both use non-interleaved RoPE (rotate_half), so
                                         no q/k permutation is needed.
gpt2       ``GPT2LMHeadModel``           HF's ``Conv1D`` stores ``[in, out]`` (transposed);
                                         ``c_attn`` is ``[q | k | v]`` over all heads.
neox       ``GPTNeoXForCausalLM``        ``query_key_value`` is per head ``[q_h; k_h; v_h]``, which
                                         is exactly Megatron's grouped layout with one head per
                                         group: copied as is.
=========  ============================  ==========================================================

Megatron's fused ``linear_qkv`` (weight ``[ng * (np/ng + 2) * d, h]``, bias likewise) is grouped
per query group g: rows ``[q heads of g (np/ng * d), k_g (d), v_g (d)]``
(``SelfAttention.get_query_key_value_tensors`` in megatron-core 0.16.1).

Vocabulary padding: Megatron pads the vocabulary to a multiple of
``make_vocab_size_divisible_by x TP`` (``padded_vocab_size``). Hugging Face folders hold only the
real vocabulary (``vocab_size``): Megatron -> HF drops the padded rows of the word embedding and
output layer (so HF logits equal Megatron's logits ``[..., :vocab_size]``); HF -> Megatron appends
zero rows (their logits start at 0; ponder mode never mixes them, ``ponder_vocab_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

STYLES = ("llama", "gpt2", "neox")


@dataclass(frozen=True)
class ModelShape:
    """What the mapping needs to know about a model besides its weights."""

    style: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    """Real vocabulary (rows of the HF embedding)."""
    padded_vocab_size: int
    """Rows of the Megatron embedding (>= vocab_size)."""
    tied: bool
    """Output layer = word embedding."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class WeightMappingError(ValueError):
    """A state dict that does not have the keys or shapes of the model it claims to be."""


# ---------------------------------------------------------------------------- QKV layouts
def split_megatron_qkv(fused: Tensor, shape: ModelShape) -> Tuple[Tensor, Tensor, Tensor]:
    """Megatron ``linear_qkv`` [ng*(np/ng+2)*d, ...] -> q [np*d, ...], k [ng*d, ...], v [ng*d, ...]."""
    ng, d = shape.num_query_groups, shape.head_dim
    per_group = shape.num_attention_heads // ng
    rest = fused.shape[1:]
    grouped = fused.reshape(ng, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(ng * per_group * d, *rest), k.reshape(ng * d, *rest), v.reshape(ng * d, *rest)


def join_megatron_qkv(q: Tensor, k: Tensor, v: Tensor, shape: ModelShape) -> Tensor:
    """Inverse of :func:`split_megatron_qkv`."""
    ng, d = shape.num_query_groups, shape.head_dim
    per_group = shape.num_attention_heads // ng
    rest = q.shape[1:]
    grouped = torch.cat(
        [q.reshape(ng, per_group * d, *rest), k.reshape(ng, d, *rest), v.reshape(ng, d, *rest)], dim=1
    )
    return grouped.reshape(ng * (per_group + 2) * d, *rest)


# ---------------------------------------------------------------------------- key tables
def _hf_layer_prefix(style: str, i: int) -> str:
    return {"llama": f"model.layers.{i}.", "gpt2": f"transformer.h.{i}.", "neox": f"gpt_neox.layers.{i}."}[style]


# Per-layer tensors that map one to one: (megatron suffix, HF suffix, transposed (HF Conv1D)).
_ONE_TO_ONE: Dict[str, List[Tuple[str, str, bool]]] = {
    "llama": [
        ("input_layernorm.weight", "input_layernorm.weight", False),
        ("self_attention.linear_proj.weight", "self_attn.o_proj.weight", False),
        ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight", False),
        ("mlp.linear_fc2.weight", "mlp.down_proj.weight", False),
    ],
    "gpt2": [
        ("input_layernorm.weight", "ln_1.weight", False),
        ("input_layernorm.bias", "ln_1.bias", False),
        ("self_attention.linear_proj.weight", "attn.c_proj.weight", True),
        ("self_attention.linear_proj.bias", "attn.c_proj.bias", False),
        ("pre_mlp_layernorm.weight", "ln_2.weight", False),
        ("pre_mlp_layernorm.bias", "ln_2.bias", False),
        ("mlp.linear_fc1.weight", "mlp.c_fc.weight", True),
        ("mlp.linear_fc1.bias", "mlp.c_fc.bias", False),
        ("mlp.linear_fc2.weight", "mlp.c_proj.weight", True),
        ("mlp.linear_fc2.bias", "mlp.c_proj.bias", False),
    ],
    "neox": [
        ("input_layernorm.weight", "input_layernorm.weight", False),
        ("input_layernorm.bias", "input_layernorm.bias", False),
        ("self_attention.linear_qkv.weight", "attention.query_key_value.weight", False),
        ("self_attention.linear_qkv.bias", "attention.query_key_value.bias", False),
        ("self_attention.linear_proj.weight", "attention.dense.weight", False),
        ("self_attention.linear_proj.bias", "attention.dense.bias", False),
        ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight", False),
        ("pre_mlp_layernorm.bias", "post_attention_layernorm.bias", False),
        ("mlp.linear_fc1.weight", "mlp.dense_h_to_4h.weight", False),
        ("mlp.linear_fc1.bias", "mlp.dense_h_to_4h.bias", False),
        ("mlp.linear_fc2.weight", "mlp.dense_4h_to_h.weight", False),
        ("mlp.linear_fc2.bias", "mlp.dense_4h_to_h.bias", False),
    ],
}

# Tensors outside the layers: (megatron key, HF key). Word embedding / output layer get vocab
# (un)padding; the output layer is present only when untied.
_GLOBAL: Dict[str, List[Tuple[str, str]]] = {
    "llama": [("decoder.final_layernorm.weight", "model.norm.weight")],
    "gpt2": [
        ("embedding.position_embeddings.weight", "transformer.wpe.weight"),
        ("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
        ("decoder.final_layernorm.bias", "transformer.ln_f.bias"),
    ],
    "neox": [
        ("decoder.final_layernorm.weight", "gpt_neox.final_layer_norm.weight"),
        ("decoder.final_layernorm.bias", "gpt_neox.final_layer_norm.bias"),
    ],
}
_WORD_EMBEDDING = {"llama": "model.embed_tokens.weight", "gpt2": "transformer.wte.weight", "neox": "gpt_neox.embed_in.weight"}


def hf_output_layer_key(style: str) -> str:
    """HF key of the untied output layer in the installed transformers."""
    if style == "neox":
        import transformers
        from packaging.version import Version

        # transformers 5.14 renamed GPT-NeoX's embed_out to lm_head (renaming old files on load).
        if Version(transformers.__version__).release < (5, 14):
            return "embed_out.weight"
    return "lm_head.weight"


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise WeightMappingError(f"no Hugging Face mapping for architecture {style!r}; supported: {', '.join(STYLES)}")


class _Source:
    """Reads a state dict by key, remembering what was used, with one-line errors."""

    def __init__(self, state: Dict[str, Tensor], side: str):
        self.state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
        self.side = side
        self.used = set()

    def __call__(self, key: str) -> Tensor:
        if key not in self.state:
            raise WeightMappingError(f"{self.side} state dict has no {key!r}: wrong architecture or shape?")
        self.used.add(key)
        return self.state[key]

    def check_all_used(self, ignorable: Callable[[str], bool]) -> None:
        left = sorted(k for k in set(self.state) - self.used if not ignorable(k))
        if left:
            raise WeightMappingError(f"{self.side} weights with no counterpart: {left[:5]}{' ...' if len(left) > 5 else ''}")


# ---------------------------------------------------------------------------- Megatron -> HF
def megatron_to_hf(state: Dict[str, Tensor], shape: ModelShape) -> Dict[str, Tensor]:
    """Megatron GPTModel state dict (TP = PP = 1 keys) -> stock HF state dict of ``shape.style``.

    Tied models get no HF output weight (HF ties it on load). Every Megatron tensor must be used.
    """
    _check_style(shape.style)
    style, take, out = shape.style, _Source(state, "Megatron"), {}
    for i in range(shape.num_layers):
        src, dst = f"decoder.layers.{i}.", _hf_layer_prefix(style, i)
        for megatron_key, hf_key, transposed in _ONE_TO_ONE[style]:
            tensor = take(src + megatron_key)
            out[dst + hf_key] = tensor.t().contiguous() if transposed else tensor
        if style == "llama":
            q, k, v = split_megatron_qkv(take(src + "self_attention.linear_qkv.weight"), shape)
            out[dst + "self_attn.q_proj.weight"], out[dst + "self_attn.k_proj.weight"] = q, k
            out[dst + "self_attn.v_proj.weight"] = v
            gate, up = take(src + "mlp.linear_fc1.weight").chunk(2, dim=0)
            out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
        elif style == "gpt2":
            # HF's c_attn is [q | k | v] over all heads (ng == np): Conv1D weight [h, 3h].
            q, k, v = split_megatron_qkv(take(src + "self_attention.linear_qkv.weight"), shape)
            out[dst + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t().contiguous()
            out[dst + "attn.c_attn.bias"] = torch.cat(
                split_megatron_qkv(take(src + "self_attention.linear_qkv.bias"), shape), dim=0
            )
    for megatron_key, hf_key in _GLOBAL[style]:
        out[hf_key] = take(megatron_key)
    out[_WORD_EMBEDDING[style]] = take("embedding.word_embeddings.weight")[: shape.vocab_size]
    if not shape.tied:
        out[hf_output_layer_key(style)] = take("output_layer.weight")[: shape.vocab_size]
    # A tied Megatron model may still list output_layer.weight (an alias of the embedding).
    take.check_all_used(lambda key: shape.tied and key == "output_layer.weight")
    return {key: value.contiguous() for key, value in out.items()}


# ---------------------------------------------------------------------------- HF -> Megatron
def _pad_rows(weight: Tensor, rows: int) -> Tensor:
    """[V, h] -> [rows, h], appending zero rows (vocabulary padding)."""
    if weight.size(0) > rows:
        raise WeightMappingError(f"vocabulary of {weight.size(0)} rows does not fit {rows} padded rows")
    return torch.cat([weight, weight.new_zeros(rows - weight.size(0), *weight.shape[1:])], dim=0)


def hf_to_megatron(state: Dict[str, Tensor], shape: ModelShape) -> Dict[str, Tensor]:
    """Stock HF state dict of ``shape.style`` -> Megatron GPTModel state dict (TP = PP = 1 keys).

    HF buffers (rotary ``inv_freq``, GPT-2's causal ``attn.bias``) are not weights and are skipped;
    every HF weight must be used.
    """
    _check_style(shape.style)
    style, take, out = shape.style, _Source(state, "Hugging Face"), {}
    for i in range(shape.num_layers):
        src, dst = _hf_layer_prefix(style, i), f"decoder.layers.{i}."
        for megatron_key, hf_key, transposed in _ONE_TO_ONE[style]:
            tensor = take(src + hf_key)
            out[dst + megatron_key] = tensor.t().contiguous() if transposed else tensor
        if style == "llama":
            out[dst + "self_attention.linear_qkv.weight"] = join_megatron_qkv(
                take(src + "self_attn.q_proj.weight"), take(src + "self_attn.k_proj.weight"),
                take(src + "self_attn.v_proj.weight"), shape,
            )
            out[dst + "mlp.linear_fc1.weight"] = torch.cat(
                [take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")], dim=0
            )
        elif style == "gpt2":
            h = shape.hidden_size
            q, k, v = take(src + "attn.c_attn.weight").t().split(h, dim=0)
            out[dst + "self_attention.linear_qkv.weight"] = join_megatron_qkv(q, k, v, shape)
            q, k, v = take(src + "attn.c_attn.bias").split(h, dim=0)
            out[dst + "self_attention.linear_qkv.bias"] = join_megatron_qkv(q, k, v, shape)
    for megatron_key, hf_key in _GLOBAL[style]:
        out[megatron_key] = take(hf_key)
    out["embedding.word_embeddings.weight"] = _pad_rows(take(_WORD_EMBEDDING[style]), shape.padded_vocab_size)
    if not shape.tied:
        out["output_layer.weight"] = _pad_rows(take(hf_output_layer_key(style)), shape.padded_vocab_size)

    def ignorable(key: str) -> bool:
        tied_alias = shape.tied and key == hf_output_layer_key(style)  # HF lists the tied lm_head too
        buffer = key.endswith(("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias", "attention.bias",
                               "attention.masked_bias"))
        return tied_alias or buffer

    take.check_all_used(ignorable)
    return {key: value.contiguous() for key, value in out.items()}
