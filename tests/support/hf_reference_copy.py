"""The plain-PyTorch reference's weights in a PonderLMForCausalLM (stock HF backbone names).

The map is written here for the two styles the reference implements (llama: RMSNorm/SwiGLU/RoPE/
GQA, untied; gpt2: LayerNorm/GeLU/learned positions, tied), so HF-vs-reference tests compare the
same function with the same weights.
"""

from __future__ import annotations

import torch
from support.hf_tiny_models import tiny_ponder_lm
from reference.model import ReferenceArch, ReferenceModel

VOCAB = 64

REFERENCE_ARCH = {
    "llama": ReferenceArch(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_query_groups=2, ffn_hidden_size=48,
        normalization="RMSNorm", activation="swiglu", position_embedding="rope", max_positions=64,
        tied_embeddings=False, bias=False,
    ),
    "gpt2": ReferenceArch(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_query_groups=4, ffn_hidden_size=128,
        normalization="LayerNorm", activation="gelu", position_embedding="learned_absolute", max_positions=64,
        tied_embeddings=True, bias=True,
    ),
}


def hf_state_from_reference(reference: ReferenceModel, arch: str) -> dict:
    """The reference's weights under the stock HF names (prefixed ``backbone.``)."""
    state = {}
    blocks = reference.blocks
    if arch == "llama":
        state["model.embed_tokens.weight"] = reference.tok_emb
        state["lm_head.weight"] = reference.lm_head
        state["model.norm.weight"] = reference.final_norm.weight
        for i, block in enumerate(blocks):
            prefix = f"model.layers.{i}."
            state[prefix + "input_layernorm.weight"] = block.attn_norm.weight
            state[prefix + "post_attention_layernorm.weight"] = block.mlp_norm.weight
            for hf, ref in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")):
                state[prefix + f"self_attn.{hf}.weight"] = getattr(block.attn, ref).weight
            for hf, ref in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_out")):
                state[prefix + f"mlp.{hf}.weight"] = getattr(block.mlp, ref).weight
    else:  # gpt2: Conv1D layers store [in, out]; c_attn is q, k, v concatenated
        state["transformer.wte.weight"] = reference.tok_emb
        state["lm_head.weight"] = reference.tok_emb
        state["transformer.wpe.weight"] = reference.pos_emb
        state["transformer.ln_f.weight"] = reference.final_norm.weight
        state["transformer.ln_f.bias"] = reference.final_norm.bias
        for i, block in enumerate(blocks):
            prefix = f"transformer.h.{i}."
            for hf, norm in (("ln_1", block.attn_norm), ("ln_2", block.mlp_norm)):
                state[prefix + f"{hf}.weight"] = norm.weight
                state[prefix + f"{hf}.bias"] = norm.bias
            qkv = (block.attn.wq, block.attn.wk, block.attn.wv)
            state[prefix + "attn.c_attn.weight"] = torch.cat([m.weight for m in qkv]).t()
            state[prefix + "attn.c_attn.bias"] = torch.cat([m.bias for m in qkv])
            for hf, linear in (("attn.c_proj", block.attn.wo), ("mlp.c_fc", block.mlp.w_in),
                               ("mlp.c_proj", block.mlp.w_out)):
                state[prefix + f"{hf}.weight"] = linear.weight.t()
                state[prefix + f"{hf}.bias"] = linear.bias
    return {"backbone." + name: tensor.detach().clone() for name, tensor in state.items()}


def random_reference(arch: str, seed: int = 0, std: float = 0.3) -> ReferenceModel:
    """Weights std * n, norm weights 1 + 0.3 n (large enough that every pass matters)."""
    torch.manual_seed(seed)
    reference = ReferenceModel(REFERENCE_ARCH[arch])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "norm.weight" in name else std * noise)
    return reference.eval()


def hf_copy(reference: ReferenceModel, arch: str, mode: str, **fields):
    model = tiny_ponder_lm(arch, mode, **fields)
    missing, unexpected = model.load_state_dict(hf_state_from_reference(reference, arch), strict=False)
    assert not unexpected and set(missing) <= {"backbone.lm_head.weight"}, (missing, unexpected)
    if arch == "gpt2":  # tied: the HF head is the embedding itself
        assert model.backbone.lm_head.weight.data_ptr() == model.backbone.transformer.wte.weight.data_ptr()
    return model
