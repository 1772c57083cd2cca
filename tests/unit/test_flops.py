"""The FLOP model counts every pass."""

import pytest

from megatron_ponder.config import PonderConfig
from megatron_ponder.training.flops import step_flops

SIZE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256)


def test_vanilla_matches_hand_count():
    config = PonderConfig(**SIZE)
    b, L, V, h = 2, 8, 100, 64
    per_layer = 2 * b * L * (h * 3 * h + h * h + 2 * h * 256) + 4 * b * L * L * h
    assert step_flops(config, L, b, V, 0) == pytest.approx(3 * (2 * per_layer + 2 * b * L * h * V))


def test_ponder_costs_s_plus_one_passes_plus_mixing():
    vanilla = step_flops(PonderConfig(**SIZE), 8, 2, 100, 0)
    ponder = step_flops(PonderConfig(**SIZE, ponder_mode="ponder", ponder_steps=3), 8, 2, 100, 0)
    mixing = 3 * 3 * 2 * 2 * 8 * 64 * 100
    assert ponder == pytest.approx(4 * vanilla + mixing)


def test_latent_counts_initial_jacobi_and_final_passes():
    config = PonderConfig(**SIZE, ponder_mode="latent", num_latent_thoughts=1)
    vanilla_layers = step_flops(PonderConfig(**SIZE), 8, 2, 0, 0)
    double_layers = step_flops(PonderConfig(**SIZE), 16, 2, 0, 0)
    # one pass at L, then J=2 rounds + the final pass at 2L; output layer excluded (vocab 0)
    assert step_flops(config, 8, 2, 0, 2) == pytest.approx(vanilla_layers + 3 * double_layers)


def test_topk_mixing_counts_k_rows_per_position():
    dense = step_flops(PonderConfig(**SIZE, ponder_mode="ponder", ponder_steps=3), 8, 2, 100, 0)
    topk = step_flops(PonderConfig(**SIZE, ponder_mode="ponder", ponder_steps=3, ponder_topk=10), 8, 2, 100, 0)
    assert dense - topk == pytest.approx(3 * 3 * 2 * 2 * 8 * 64 * (100 - 10))


def test_passes_without_graph_count_their_forward_once():
    """Truncated backprop: a leading pass without a graph costs 1x its forward, not 3x."""
    vanilla = step_flops(PonderConfig(**SIZE), 8, 2, 100, 0)  # 3x one pass
    mixing = 2 * 2 * 8 * 64 * 100  # forward of one p @ E
    # ponder S=3, K=1: passes 0 and 1 forward only (pass + mixing), pass 2 and the final pass 3x.
    truncated = step_flops(PonderConfig(**SIZE, ponder_mode="ponder", ponder_steps=3, ponder_grad_steps=1), 8, 2, 100, 0)
    assert truncated == pytest.approx(2 * (vanilla / 3 + mixing) + 2 * vanilla + 3 * mixing)
    # latent N=1, J=3, K=1: the initial pass (L) and rounds 1-2 (2L) forward only.
    single, double = (step_flops(PonderConfig(**SIZE), length, 2, 0, 0) / 3 for length in (8, 16))
    config = PonderConfig(**SIZE, ponder_mode="latent", num_latent_thoughts=1, jacobi_grad_rounds=1)
    assert step_flops(config, 8, 2, 0, 3) == pytest.approx(single + 2 * double + 3 * 2 * double)
    # full recompute repeats only the forwards that have a backward
    recomputed = PonderConfig(**SIZE, ponder_mode="latent", num_latent_thoughts=1, jacobi_grad_rounds=1,
                              recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    assert step_flops(recomputed, 8, 2, 0, 3) == pytest.approx(single + 2 * double + 4 * 2 * double)


@pytest.mark.parametrize("fields, rounds", [(dict(ponder_mode="ponder", ponder_steps=3), 0),
                                            (dict(ponder_mode="latent", num_latent_thoughts=1), 3)])
def test_k_at_least_the_passes_counts_like_all(fields, rounds):
    everything = step_flops(PonderConfig(**SIZE, **fields), 8, 2, 100, rounds)
    field = "ponder_grad_steps" if fields["ponder_mode"] == "ponder" else "jacobi_grad_rounds"
    assert step_flops(PonderConfig(**SIZE, **fields, **{field: 3}), 8, 2, 100, rounds) == everything
    assert step_flops(PonderConfig(**SIZE, **fields, **{field: 1}), 8, 2, 100, rounds) < everything
