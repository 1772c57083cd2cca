"""Adaptive Jacobi rounds of the exported model (``jacobi_tol`` of ``forward`` and ``generate``,
issue 24 item 3): off by default; a tolerance of 0 (or one never reached) is the fixed-round path
exactly, logits and generated ids; a tolerance above the first residual stops after one round;
the rounds run are reported in ``model.jacobi_rounds_used``.

Run: OMP_NUM_THREADS=1 python -m pytest tests/unit/test_hf_adaptive_rounds.py
"""

from __future__ import annotations

import pytest
import torch
from support.hf_tiny_models import tiny_ponder_lm

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

CAP = 4


@pytest.fixture(scope="module")
def model():
    return tiny_ponder_lm("llama", "latent", num_latent_thoughts=2, jacobi_eval_rounds=CAP, weight_std=0.2)


def _prompt(seed: int = 0):
    return torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_forward_tolerance_zero_is_the_fixed_rounds_exactly(model):
    ids = _prompt()
    fixed = model(ids, labels=ids)
    assert model.jacobi_rounds_used == CAP
    for tolerance in (0.0, 1e-300):  # 0: off; 1e-300: the adaptive path, never stopping
        adaptive = model(ids, labels=ids, jacobi_tol=tolerance)
        assert torch.equal(adaptive.logits, fixed.logits) and torch.equal(adaptive.loss, fixed.loss)
        assert model.jacobi_rounds_used == CAP


@torch.no_grad()
def test_forward_stops_at_one_round_above_the_first_residual(model):
    ids = _prompt()
    stopped = model(ids, jacobi_tol=1e9)
    assert model.jacobi_rounds_used == 1
    assert torch.equal(stopped.logits, model(ids, num_jacobi_rounds=1).logits)
    assert not torch.equal(stopped.logits, model(ids).logits)  # the test can tell the two apart


@torch.no_grad()
def test_generate_tolerance_zero_is_the_fixed_rounds_exactly(model):
    ids = _prompt(1)
    fixed = model.generate(ids, max_new_tokens=4)
    for tolerance in (0.0, 1e-300):
        assert torch.equal(model.generate(ids, max_new_tokens=4, jacobi_tol=tolerance), fixed)
        assert model.jacobi_rounds_used == CAP
    stopped = model.generate(ids, max_new_tokens=4, jacobi_tol=1e9)
    assert model.jacobi_rounds_used == 1
    assert torch.equal(stopped, model.generate(ids, max_new_tokens=4, num_jacobi_rounds=1))


def test_generate_refuses_a_tolerance_without_the_jacobi_prefill(model):
    ids = _prompt()
    for kwargs in (dict(use_cache=False), dict(prefill="sequential"), dict(jacobi_tol=-1.0)):
        with pytest.raises(ValueError, match="jacobi_tol"):
            model.generate(ids, max_new_tokens=2, **{"jacobi_tol": 1e-3, **kwargs})
