"""``init_style="ponderlm"`` (``--init-style ponderlm``): the papers' init, parameter group by group.

A small model is built in each mode / architecture that has its own divisor; the empirical std of
every parameter group is compared with the formula computed here, written out directly:
sigma = sqrt(2/(5h)) for every linear layer and embedding, sigma / sqrt(2 layers (S+1)) (ponder),
/ sqrt(2 layers (N+1)) (latent, neox), / sqrt(2 layers) (latent llama, none) for the
attention-output and MLP-output projections; every group truncated at 3 of its sigmas. A normal
truncated at +-3 sigma has std 0.98658 sigma (computed below, not assumed).

Run: OMP_NUM_THREADS=1 python -m pytest tests/unit/test_paper_init.py
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_ponder.config import PonderConfigError
from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config
from megatron_ponder.training.model_config import model_config
from megatron_ponder.training.arguments import ArgumentError, parse_args

HIDDEN, LAYERS, FFN, VOCAB = 128, 3, 384, 512
# Each case: (style, mode fields, divisor of the output projections, written out).
CASES = {
    "ponder-neox-S3": ("neox", dict(ponder_mode="ponder", ponder_steps=3), math.sqrt(2 * LAYERS * 4)),
    "latent-llama-N2": ("llama", dict(ponder_mode="latent", num_latent_thoughts=2), math.sqrt(2 * LAYERS)),
    "latent-neox-N2": ("neox", dict(ponder_mode="latent", num_latent_thoughts=2), math.sqrt(2 * LAYERS * 3)),
    "none-gpt2": ("gpt2", dict(ponder_mode="none"), math.sqrt(2 * LAYERS)),
}


def truncated_std_factor(bound: float = 3.0) -> float:
    """std of N(0, 1) truncated at +-bound: sqrt(1 - 2 bound phi(bound) / (2 Phi(bound) - 1))."""
    phi = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * phi / mass)


def build(style, init_style="ponderlm", **fields):
    torch.manual_seed(0)
    config = make_ponder_config(style, init_style=init_style, num_layers=LAYERS, hidden_size=HIDDEN,
                                num_attention_heads=4, ffn_hidden_size=FFN, use_cpu_initialization=True, **fields)
    return build_ponder_gpt(config, style, VOCAB, 64, transformer_impl="local")


def weight_groups(model):
    """group name -> all of that group's weights, flattened (biases and norms left out)."""
    groups = {}
    for name, param in model.named_parameters():
        if not name.endswith("weight") or "norm" in name:
            continue
        group = name.split(".")[-2]  # linear_qkv, linear_proj, linear_fc1, linear_fc2, word_embeddings, ...
        groups.setdefault(group, []).append(param.detach().flatten())
    return {group: torch.cat(tensors) for group, tensors in groups.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_group_has_the_papers_std_truncated_at_three_sigma(megatron_world_of_one, case):
    style, fields, divisor = CASES[case]
    model = build(style, **fields)
    sigma = math.sqrt(2 / (5 * HIDDEN))
    expected = {"linear_qkv": sigma, "linear_fc1": sigma, "word_embeddings": sigma,
                "linear_proj": sigma / divisor, "linear_fc2": sigma / divisor}
    if style == "gpt2":
        expected["position_embeddings"] = sigma  # tied: no separate output layer
    else:
        expected["output_layer"] = sigma
    groups = weight_groups(model)
    assert sorted(groups) == sorted(expected)
    factor = truncated_std_factor()
    for group, std in expected.items():
        values = groups[group]
        assert values.std().item() == pytest.approx(factor * std, rel=0.03), group
        assert values.abs().max().item() <= 3 * std * (1 + 1e-6), group  # truncated at 3 sigma ...
        assert values.abs().max().item() > 2.6 * std, group  # ... and not earlier
        assert abs(values.mean().item()) < 0.05 * std, group
    assert model.config.init_method_std == pytest.approx(sigma)
    if fields["ponder_mode"] == "latent":  # the latent input scale follows: the papers' sqrt(2.5 h)
        assert model.config.input_embedding_scale == pytest.approx(math.sqrt(2.5 * HIDDEN))


def test_megatron_style_is_unchanged(megatron_world_of_one):
    model = build("llama", init_style="megatron", init_method_std=0.02)
    groups = weight_groups(model)
    assert groups["linear_qkv"].std().item() == pytest.approx(0.02, rel=0.03)
    assert groups["linear_fc2"].std().item() == pytest.approx(0.02 / math.sqrt(2 * LAYERS), rel=0.03)
    assert groups["linear_qkv"].abs().max().item() > 3 * 0.02  # an untruncated normal


def test_paper_init_refuses_an_explicit_std():
    with pytest.raises(PonderConfigError, match="init_style='ponderlm' sets init_method_std itself"):
        make_ponder_config("llama", init_style="ponderlm", num_layers=2, hidden_size=32, num_attention_heads=4,
                           init_method_std=0.02)
    with pytest.raises(ValueError, match="unknown init_style 'paper'"):
        make_ponder_config("llama", init_style="paper", num_layers=2, hidden_size=32, num_attention_heads=4)


def config_from_flags(*flags):
    args = parse_args(["--preset", "cpu-tiny", "--mock-data", "--ponder-mode", "latent", *flags])
    args.tokenizer_vocab_size = None  # set by the data setup in a run
    return model_config(args)


def test_the_flag_reaches_the_config():
    config = config_from_flags("--init-style", "ponderlm")
    assert config.init_method_std == pytest.approx(math.sqrt(2 / (5 * 128)))
    assert config.input_embedding_scale == pytest.approx(math.sqrt(2.5 * 128))
    assert config_from_flags().init_method_std == 0.02
    with pytest.raises(ArgumentError, match="--init-method-std 0.01 with --init-style ponderlm"):
        config_from_flags("--init-style", "ponderlm", "--init-method-std", "0.01")
