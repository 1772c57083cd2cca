"""The HF scoring forward computes the methods exactly: equal to the plain-PyTorch oracle.

The oracle (tests/reference, verified equal to the Megatron PonderGPTModel in
tests/unit/test_methods_match_reference.py) is loaded into the stock HF backbone with a weight
map written here for the two styles it implements (llama: RMSNorm/SwiGLU/RoPE/GQA, untied;
gpt2: LayerNorm/GeLU/learned positions, tied). Per-token cross-entropies must agree (fp32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.hf_tiny_models import tiny_ponder_lm
from reference.methods import latent_loss, ponder_loss
from reference.model import ReferenceArch, ReferenceModel

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

VOCAB, LENGTH, BATCH = 64, 7, 2

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


def random_reference(arch: str, seed: int = 0) -> ReferenceModel:
    torch.manual_seed(seed)
    reference = ReferenceModel(REFERENCE_ARCH[arch])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "norm.weight" in name else 0.3 * noise)
    return reference.eval()


def hf_copy(reference: ReferenceModel, arch: str, mode: str, **fields):
    model = tiny_ponder_lm(arch, mode, **fields)
    missing, unexpected = model.load_state_dict(hf_state_from_reference(reference, arch), strict=False)
    assert not unexpected and set(missing) <= {"backbone.lm_head.weight"}, (missing, unexpected)
    if arch == "gpt2":  # tied: the HF head is the embedding itself
        assert model.backbone.lm_head.weight.data_ptr() == model.backbone.transformer.wte.weight.data_ptr()
    return model


def per_token_ce(logits, labels):
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:], torch.arange(LENGTH).expand(BATCH, -1)


def relative_error(actual, expected) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("accumulate", [True, False])
def test_ponder_forward_matches_reference(arch, accumulate):
    reference = random_reference(arch)
    model = hf_copy(reference, arch, "ponder", ponder_steps=2, ponder_accumulate=accumulate,
                    input_embedding_scale=1.5)
    tokens, labels, positions = batch()
    with torch.no_grad():
        expected = ponder_loss(reference, tokens, labels, positions, steps=2, accumulate=accumulate, scale=1.5)
        actual = per_token_ce(model(tokens).logits, labels)
        vanilla = per_token_ce(model.backbone(tokens).logits, labels)
    assert relative_error(actual, expected) < 1e-5
    # the feedback passes matter at this init: a model that skipped them would fail above
    assert relative_error(vanilla, expected) > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("num_thoughts,rounds", [(1, 2), (2, 3)])
def test_latent_forward_matches_reference(arch, num_thoughts, rounds):
    reference = random_reference(arch)
    model = hf_copy(reference, arch, "latent", num_latent_thoughts=num_thoughts, jacobi_eval_rounds=rounds,
                    input_embedding_scale=3.0)
    tokens, labels, positions = batch()
    with torch.no_grad():
        expected, _ = latent_loss(reference, tokens, labels, positions, num_thoughts, rounds, scale=3.0)
        actual = per_token_ce(model(tokens).logits, labels)
        other_rounds, _ = latent_loss(reference, tokens, labels, positions, num_thoughts, rounds - 1, scale=3.0)
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(other_rounds, expected) > 1e-4  # J is visible at this init


def test_ponder_vocab_size_masks_padding_rows():
    """Rows past ponder_vocab_size get probability 0: changing them moves nothing but their logits."""
    model = tiny_ponder_lm("llama", "ponder", ponder_vocab_size=60)
    tokens = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(tokens).logits[..., :60]
        model.backbone.model.embed_tokens.weight[60:] += 5.0
        model.backbone.lm_head.weight[60:] += 5.0
        after = model(tokens).logits[..., :60]
    assert torch.equal(before, after)


def test_loss_is_shifted_next_token_cross_entropy():
    model = tiny_ponder_lm("gpt_neox", "latent", num_latent_thoughts=2)
    tokens = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = model(tokens, labels=tokens)
    expected = per_token_ce(output.logits[:, :-1], tokens[:, 1:]).mean()
    torch.testing.assert_close(output.loss, expected)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="ponder_mode must be one of ponder, latent"):
        tiny_ponder_lm("llama", "none")
    with pytest.raises(ValueError, match="num_latent_thoughts must be an integer >= 1"):
        tiny_ponder_lm("llama", "latent", num_latent_thoughts=0)
