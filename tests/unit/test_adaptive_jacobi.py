"""Adaptive Jacobi rounds at evaluation (``--jacobi-eval-tol``, issue 24 item 3).

A tolerance of 0 is the fixed-round path exactly; a tolerance the first residual is already below
stops after one round; one between two residuals stops between them; every stop gives exactly
the logits of the fixed-round run with that many rounds. The evaluation step reports the mean
rounds, the eval log line and the metrics file show them, and the flag's bad uses are refused.
"""

import json
import math

import pytest
import torch

from megatron_ponder.config import PonderConfigError
from support.tiny_models import random_batch, tiny_config, tiny_model

CAP = 4  # jacobi_eval_rounds of the tests


def _latent(**fields):
    model = tiny_model("llama", ponder_mode="latent", num_latent_thoughts=2, jacobi_eval_rounds=CAP, **fields)
    return model.eval()


def _run(model, tokens, positions, labels=None, **kwargs):
    with torch.no_grad():
        return model(tokens, positions, None, labels=labels, return_jacobi_residuals=True, **kwargs)


def test_tolerance_zero_is_the_fixed_rounds_exactly(megatron_world_of_one):
    model = _latent()
    tokens, labels, positions = random_batch(2, 6)
    fixed_logits, fixed_residuals = _run(model, tokens, positions)
    for tolerance in (0.0, 1e-300):  # 0: the default path; 1e-300: the adaptive path, never stopping
        logits, residuals = _run(model, tokens, positions, jacobi_tol=tolerance)
        assert torch.equal(logits, fixed_logits) and torch.equal(residuals, fixed_residuals)
        loss, _ = _run(model, tokens, positions, labels=labels, jacobi_tol=tolerance)
        assert torch.equal(loss, _run(model, tokens, positions, labels=labels)[0])
    assert fixed_residuals.numel() == CAP


def test_a_tolerance_stops_the_rounds_where_the_residual_falls_below_it(megatron_world_of_one):
    model = _latent()
    tokens, _, positions = random_batch(2, 6)
    _, residuals = _run(model, tokens, positions)
    r = residuals.tolist()
    assert r[0] > 2 * r[1] > 4 * r[2] > 0, f"residuals do not shrink enough for the test: {r}"
    for tolerance, expected_rounds in ((10 * r[0], 1), (math.sqrt(r[0] * r[1]), 2), (math.sqrt(r[1] * r[2]), 3)):
        logits, used = _run(model, tokens, positions, jacobi_tol=tolerance)
        assert used.numel() == expected_rounds
        # Stopping early is exactly the fixed-round run with that many rounds.
        assert torch.equal(logits, _run(model, tokens, positions, num_jacobi_rounds=expected_rounds)[0])
        assert torch.equal(used, residuals[:expected_rounds])


def test_no_adaptive_rounds_in_training_mode(megatron_world_of_one):
    model = _latent().train()
    tokens, labels, positions = random_batch(1, 4)
    with pytest.raises(ValueError, match="evaluation only"):
        model(tokens, positions, None, labels=labels, jacobi_tol=1e-3)


def test_the_config_field_is_checked():
    assert tiny_config("llama", ponder_mode="latent").jacobi_eval_tol == 0.0
    for bad in (-1e-3, float("inf"), float("nan")):
        with pytest.raises(PonderConfigError, match="jacobi_eval_tol"):
            tiny_config("llama", ponder_mode="latent", jacobi_eval_tol=bad)


def _evaluation(model, tolerance):
    from megatron_ponder.training.step import evaluation_step

    model.config.jacobi_eval_tol = tolerance
    batches = []
    for seed in range(3):
        tokens, labels, positions = random_batch(2, 6, seed=seed)
        batches.append(dict(tokens=tokens, labels=labels, position_ids=positions, loss_mask=torch.ones_like(tokens)))
    return evaluation_step([model], batches, micro_batch_size=2, seq_length=6)


def test_the_evaluation_step_reports_the_mean_rounds(megatron_world_of_one):
    model = _latent()
    fixed = _evaluation(model, 0.0)
    assert fixed.mean_jacobi_rounds == CAP and fixed.jacobi_rounds == CAP
    assert _evaluation(model, 1e-300).loss == fixed.loss  # adaptive path, no stop: the same loss
    stopped = _evaluation(model, 1e9)
    assert stopped.mean_jacobi_rounds == 1.0 and stopped.loss != fixed.loss
    assert model.training  # evaluation_step puts the model back in training mode
    plain = tiny_model("llama", ponder_mode="none")
    assert _evaluation(plain, 0.0).mean_jacobi_rounds is None


def test_the_eval_log_line_and_metrics_show_the_mean_rounds(megatron_world_of_one, capsys, tmp_path):
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.run_logger import RunLogger

    args = parse_args(["--mock-data", "--metrics-file", str(tmp_path / "metrics.jsonl")])
    logger = RunLogger(args, total_iters=10, start_iteration=0)
    capsys.readouterr()
    logger.log_evaluation(10, 2.5, 1.75)
    logger.log_evaluation(20, 2.4)  # modes without thoughts: no rounds field
    logger.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation")]
    assert lines[0].endswith("| jacobi rounds 1.75") and "jacobi" not in lines[1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["jacobi_rounds"] == 1.75 and "jacobi_rounds" not in records[1]


@pytest.mark.parametrize("flags, message", [
    (["--ponder-mode", "ponder"], "only applies to --ponder-mode latent"),
    (["--pipeline-model-parallel-size", "2", "--micro-batch-size", "1", "--global-batch-size", "2"], "needs --pipeline-model-parallel-size 1"),
    (["--jacobi-eval-tol=-1"], "--jacobi-eval-tol must be in"),
])
def test_the_flag_refuses_what_it_cannot_do(flags, message):
    from megatron_ponder.training.arguments import ArgumentError, parse_args, validate_args

    args = parse_args(["--mock-data", "--jacobi-eval-tol", "1e-3", *flags])
    with pytest.raises(ArgumentError, match=message):
        validate_args(args, world_size=2)
