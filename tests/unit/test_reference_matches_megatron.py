"""The plain-PyTorch reference (tests/reference) against a stock Megatron-Core GPTModel.

1. Loaded with the same weights, the reference's vanilla loss and every gradient equal
   Megatron's (local spec, CPU, fp32) for LLaMA-style, GPT-2-style and a mixed architecture.
2. Self-consistency of the reference methods: Jacobi with J >= N*L rounds equals the
   sequential definition of latent thoughts; pondering with 0 steps is the vanilla model.

Run: OMP_NUM_THREADS=1 PYTHONPATH=.:tests python -m pytest tests/unit/test_reference_matches_megatron.py
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference.megatron_weights import load_megatron_state_dict
from reference.methods import latent_loss, latent_sequential_loss, ponder_loss, vanilla_loss
from reference.model import ReferenceArch, ReferenceModel

VOCAB, MAX_POS, BATCH, SEQ = 128, 64, 2, 12

ARCHS = {
    "llama": dict(
        config=dict(num_query_groups=2, ffn_hidden_size=96, normalization="RMSNorm",
                    gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False),
        position_embedding="rope", tied=False,
    ),
    "gpt2": dict(
        config=dict(num_query_groups=4, ffn_hidden_size=128, normalization="LayerNorm",
                    add_bias_linear=True),
        position_embedding="learned_absolute", tied=True,
    ),
    # GQA with biases, SwiGLU with biases: exercises the grouped qkv bias layout.
    "mixed": dict(
        config=dict(num_query_groups=2, ffn_hidden_size=80, normalization="LayerNorm",
                    gated_linear_unit=True, activation_func=F.silu, add_bias_linear=True),
        position_embedding="rope", tied=True,
    ),
}


@pytest.fixture(scope="module")
def megatron_world():
    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel()
    yield


def build_megatron(name: str, seed: int = 0):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    spec = ARCHS[name]
    config = TransformerConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0, **spec["config"],
    )
    torch.manual_seed(seed)
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=config.normalization),
        vocab_size=VOCAB,
        max_sequence_length=MAX_POS,
        position_embedding_type=spec["position_embedding"],
        share_embeddings_and_output_weights=spec["tied"],
    )
    # Norms init to 1/0 and biases to 0: randomise them so a wrong mapping cannot hide.
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "layernorm" in pname and pname.endswith("weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif pname.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    arch = ReferenceArch(
        vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4,
        num_query_groups=config.num_query_groups, ffn_hidden_size=config.ffn_hidden_size,
        normalization=config.normalization, norm_eps=config.layernorm_epsilon,
        activation="swiglu" if config.gated_linear_unit else "gelu",
        position_embedding=spec["position_embedding"], max_positions=MAX_POS,
        tied_embeddings=spec["tied"], bias=config.add_bias_linear,
    )
    return model, arch


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ).contiguous()
    return tokens, labels, position_ids


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_vanilla_loss_and_gradients_match_megatron(megatron_world, name):
    megatron_model, arch = build_megatron(name)
    reference = ReferenceModel(arch)
    load_megatron_state_dict(reference, megatron_model.state_dict(), arch)
    tokens, labels, position_ids = batch()

    causal_mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1)[None, None]
    mcore_loss = megatron_model(tokens, position_ids, causal_mask, labels=labels)
    ref_loss = vanilla_loss(reference, tokens, labels, position_ids)
    assert mcore_loss.shape == ref_loss.shape == (BATCH, SEQ)
    torch.testing.assert_close(ref_loss, mcore_loss.float(), rtol=1e-5, atol=1e-6)

    mcore_loss.sum().backward()
    ref_loss.sum().backward()
    mcore_grad = megatron_model.embedding.word_embeddings.weight.grad
    torch.testing.assert_close(reference.tok_emb.grad, mcore_grad, rtol=1e-5, atol=1e-6)

    # Every other gradient: map Megatron's grads through the same loader and compare.
    grads = {n: p.grad for n, p in megatron_model.named_parameters() if p.grad is not None}
    assert len(grads) == sum(1 for _ in megatron_model.parameters())
    mapped = ReferenceModel(arch)
    load_megatron_state_dict(mapped, grads, arch)
    for (pname, ref_p), (_, mapped_p) in zip(reference.named_parameters(), mapped.named_parameters(), strict=True):
        torch.testing.assert_close(ref_p.grad, mapped_p, rtol=1e-5, atol=1e-6, msg=pname)


def small_reference(position_embedding: str, seed: int = 0) -> ReferenceModel:
    torch.manual_seed(seed)
    arch = ReferenceArch(
        vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_query_groups=2,
        ffn_hidden_size=48, normalization="RMSNorm", activation="swiglu",
        position_embedding=position_embedding, max_positions=16, tied_embeddings=False, bias=False,
    )
    model = ReferenceModel(arch).double()
    with torch.no_grad():  # random (not identity) norms
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("num_thoughts,length", [(1, 5), (2, 4)])
@pytest.mark.parametrize("position_embedding", ["rope", "learned_absolute"])
def test_latent_jacobi_reaches_sequential_definition(num_thoughts, length, position_embedding):
    model = small_reference(position_embedding)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 50, (2, length), generator=g)
    labels = torch.randint(0, 50, (2, length), generator=g)
    position_ids = torch.arange(length).unsqueeze(0).expand(2, length)
    scale = math.sqrt(2.5 * 32)

    sequential = latent_sequential_loss(model, tokens, labels, position_ids, num_thoughts, scale)
    rounds = num_thoughts * length
    jacobi, residuals = latent_loss(model, tokens, labels, position_ids, num_thoughts, rounds + 1, scale)
    torch.testing.assert_close(jacobi, sequential, rtol=1e-5, atol=1e-7)

    assert len(residuals) == rounds + 1
    assert residuals[0] > 1e-4, residuals  # the initial thoughts are not yet the fixed point
    assert residuals[-1] < 1e-20 and residuals[-2] < 1e-20, residuals  # reached and stays
    assert residuals[rounds // 2] < residuals[0], residuals

    # Too few rounds differ from the sequential definition (the test is not vacuous).
    short, _ = latent_loss(model, tokens, labels, position_ids, num_thoughts, 0, scale)
    assert not torch.allclose(short, sequential, rtol=1e-5, atol=1e-7)

    # Gradients agree too.
    model.zero_grad()
    sequential.sum().backward()
    seq_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    jacobi, _ = latent_loss(model, tokens, labels, position_ids, num_thoughts, rounds, scale)
    jacobi.sum().backward()
    for a, b in zip(seq_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-9)


def test_ponder_with_zero_steps_is_vanilla_and_steps_matter():
    model = small_reference("rope")
    tokens = torch.randint(0, 50, (2, 6))
    labels = torch.randint(0, 50, (2, 6))
    position_ids = torch.arange(6).unsqueeze(0).expand(2, 6)
    base = vanilla_loss(model, tokens, labels, position_ids)
    torch.testing.assert_close(ponder_loss(model, tokens, labels, position_ids, 0, True, 1.0), base)
    accumulated = ponder_loss(model, tokens, labels, position_ids, 2, True, 4.0)
    replaced = ponder_loss(model, tokens, labels, position_ids, 2, False, 4.0)
    assert not torch.allclose(accumulated, replaced)
    accumulated.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
