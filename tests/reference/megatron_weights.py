"""Copy the weights of a Megatron-Core 0.16.1 GPTModel (local spec, TP = 1) into ReferenceModel.

Megatron layouts used here, verified against the 0.16.1 sources:

* ``self_attention.linear_qkv.weight`` is ``[ng * (np/ng + 2) * d, h]``, grouped per query
  group: for g in 0..ng-1, rows ``[q heads g*np/ng .. (g+1)*np/ng - 1, k_g, v_g]``, each head
  ``d`` rows (``SelfAttention.get_query_key_value_tensors`` views it as ``[.., ng, (np/ng+2)*d]``
  and splits ``[np/ng*d, d, d]``; ``DotProductAttention`` then ``repeat_interleave``s k/v so
  query head j uses group j // (np/ng)). The bias follows the same row order.
* ``mlp.linear_fc1.weight`` with a gated unit is ``[2f, h]``: gate rows then up rows
  (``torch.chunk(x, 2)``; ``activation(x_glu) * x_linear``).
* Norms of the local spec are ``torch.nn.LayerNorm`` (weight, bias) / ``torch.nn.RMSNorm``
  (weight only), whatever ``add_bias_linear`` says.
"""

from __future__ import annotations

from typing import Dict

import torch

from reference.model import ReferenceArch, ReferenceModel


def _split_qkv(weight: torch.Tensor, arch: ReferenceArch):
    """[ng*(np/ng+2)*d, ...] -> q [np*d, ...], k [ng*d, ...], v [ng*d, ...]."""
    ng, d = arch.num_query_groups, arch.head_dim
    per_group = arch.num_heads // ng
    grouped = weight.reshape(ng, (per_group + 2) * d, *weight.shape[1:])
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return (
        q.reshape(ng * per_group * d, *weight.shape[1:]),
        k.reshape(ng * d, *weight.shape[1:]),
        v.reshape(ng * d, *weight.shape[1:]),
    )


@torch.no_grad()
def load_megatron_state_dict(
    ref_model: ReferenceModel, megatron_state_dict: Dict[str, torch.Tensor], arch: ReferenceArch
) -> None:
    """Copy every weight of ``megatron_state_dict`` into ``ref_model`` (in place).

    Raises KeyError on a missing key and ValueError on an unused one (``_extra_state`` and the
    unused ``output_layer.weight`` of a tied model are ignored).
    """
    sd = {k: v for k, v in megatron_state_dict.items() if not k.endswith("_extra_state")}
    used = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return sd[key].detach().float()

    def copy_linear(dst: torch.nn.Linear, prefix: str) -> None:
        dst.weight.copy_(take(prefix + ".weight"))
        if arch.bias:
            dst.bias.copy_(take(prefix + ".bias"))

    def copy_norm(dst, prefix: str) -> None:
        dst.weight.copy_(take(prefix + ".weight"))
        if dst.bias is not None:
            dst.bias.copy_(take(prefix + ".bias"))

    ref_model.tok_emb.copy_(take("embedding.word_embeddings.weight"))
    if ref_model.pos_emb is not None:
        pos = take("embedding.position_embeddings.weight")
        ref_model.pos_emb.copy_(pos[: ref_model.pos_emb.shape[0]])

    for i, block in enumerate(ref_model.blocks):
        p = f"decoder.layers.{i}."
        copy_norm(block.attn_norm, p + "input_layernorm")
        q, k, v = _split_qkv(take(p + "self_attention.linear_qkv.weight"), arch)
        block.attn.wq.weight.copy_(q)
        block.attn.wk.weight.copy_(k)
        block.attn.wv.weight.copy_(v)
        if arch.bias:
            q, k, v = _split_qkv(take(p + "self_attention.linear_qkv.bias"), arch)
            block.attn.wq.bias.copy_(q)
            block.attn.wk.bias.copy_(k)
            block.attn.wv.bias.copy_(v)
        copy_linear(block.attn.wo, p + "self_attention.linear_proj")
        copy_norm(block.mlp_norm, p + "pre_mlp_layernorm")
        if arch.activation == "swiglu":
            gate, up = take(p + "mlp.linear_fc1.weight").chunk(2, dim=0)
            block.mlp.w_gate.weight.copy_(gate)
            block.mlp.w_up.weight.copy_(up)
            if arch.bias:
                gate, up = take(p + "mlp.linear_fc1.bias").chunk(2, dim=0)
                block.mlp.w_gate.bias.copy_(gate)
                block.mlp.w_up.bias.copy_(up)
        else:
            copy_linear(block.mlp.w_in, p + "mlp.linear_fc1")
        copy_linear(block.mlp.w_out, p + "mlp.linear_fc2")

    copy_norm(ref_model.final_norm, "decoder.final_layernorm")
    if ref_model.lm_head is not None:
        ref_model.lm_head.copy_(take("output_layer.weight"))
    else:
        used.add("output_layer.weight")  # a tied model may still list it; it is not used

    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"Megatron weights not mapped into the reference model: {unused}")
