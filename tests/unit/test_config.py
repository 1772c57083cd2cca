"""PonderConfig: defaults, validation errors, and the per-iteration Jacobi draw."""

import pytest

from megatron_ponder.config import PonderConfig, PonderConfigError

SIZE = dict(num_layers=2, hidden_size=32, num_attention_heads=4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("ponder_mode", "think"),
        ("ponder_steps", 0),
        ("num_latent_thoughts", 0),
        ("jacobi_train_rounds", (3, 2)),
        ("jacobi_train_rounds", (-1, 2)),
        ("jacobi_train_rounds", (2,)),
        ("jacobi_eval_rounds", -1),
        ("input_embedding_scale", 0.0),
        ("ponder_vocab_size", 0),
    ],
)
def test_invalid_field_raises_one_line_error_naming_it(field, value):
    with pytest.raises(PonderConfigError) as error:
        PonderConfig(**SIZE, **{field: value})
    message = str(error.value)
    assert f"PonderConfig.{field}" in message
    assert "\n" not in message


def test_input_embedding_scale_default_keeps_token_and_thought_slots_comparable():
    latent = PonderConfig(**SIZE, ponder_mode="latent", init_method_std=0.02)
    assert latent.input_embedding_scale == pytest.approx(50.0)
    assert PonderConfig(**SIZE, ponder_mode="ponder").input_embedding_scale == 1.0
    assert PonderConfig(**SIZE).input_embedding_scale == 1.0
    explicit = PonderConfig(**SIZE, ponder_mode="latent", input_embedding_scale=3.0)
    assert explicit.input_embedding_scale == 3.0


def test_slots_per_token():
    assert PonderConfig(**SIZE, ponder_mode="latent", num_latent_thoughts=2).slots_per_token == 3
    assert PonderConfig(**SIZE, ponder_mode="ponder", num_latent_thoughts=2).slots_per_token == 1


def test_jacobi_rounds_are_a_pure_function_of_seed_and_iteration():
    config = PonderConfig(**SIZE, ponder_mode="latent", jacobi_train_rounds=(2, 3))
    draws = [config.jacobi_rounds_for_iteration(i) for i in range(200)]
    assert draws == [config.jacobi_rounds_for_iteration(i) for i in range(200)]
    assert set(draws) == {2, 3}
    assert 60 < draws.count(2) < 140  # roughly uniform
    other_seed = PonderConfig(**SIZE, ponder_mode="latent", jacobi_seed=7)
    assert draws != [other_seed.jacobi_rounds_for_iteration(i) for i in range(200)]
    fixed = PonderConfig(**SIZE, ponder_mode="latent", jacobi_train_rounds=(4, 4))
    assert {fixed.jacobi_rounds_for_iteration(i) for i in range(20)} == {4}
