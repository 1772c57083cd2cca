"""--wandb-project: a tiny run logged by real wandb in offline mode; the offline run's own record
(read back from its ``.wandb`` file, what ``wandb sync`` would upload) holds every train and
validation loss of the metrics file, at its iteration, exactly, under Megatron-LM's names
(``lm loss``, ``lm loss validation``, ``learning-rate``, ``grad-norm``, ``samples vs steps``)."""

import pytest

from support.metrics import losses
from support.wandb_offline import logged_history, offline_run_file

pytest.importorskip("wandb", reason="wandb is in the `test` extra: pip install -e '.[test]'")


def test_wandb_offline_run_logs_the_metrics_file_losses(tmp_path, monkeypatch):
    from megatron_ponder.pretrain import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    metrics = tmp_path / "metrics.jsonl"
    argv = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--train-iters", "4",
            "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "1", "--metrics-file", metrics,
            "--wandb-project", "ponder-test", "--wandb-exp-name", "tiny", "--wandb-save-dir", tmp_path]
    assert main([str(a) for a in argv]) == 0

    rows = logged_history(offline_run_file(str(tmp_path)))
    logged = {"lm loss": {}, "lm loss validation": {}}
    for row in rows:
        for key in logged:
            if key in row:
                logged[key][row["_step"]] = row[key]
    expected_train, expected_valid = losses(metrics, "train"), losses(metrics, "valid")
    assert sorted(expected_train) == [1, 2, 3, 4] and sorted(expected_valid) == [0, 2, 4]
    assert logged["lm loss"] == expected_train
    assert logged["lm loss validation"] == expected_valid
    train_rows = [row for row in rows if "lm loss" in row]
    assert all("learning-rate" in row and "grad-norm" in row for row in train_rows)
    assert [row["samples vs steps"] for row in train_rows] == [2, 4, 6, 8]  # micro batch 2, one process
