"""pretrain --dataloader-type dali under torchrun (2 data-parallel CPU ranks): the same losses as the
default loader (training and validation), and a run saved and resumed with DALI continues at the
same sample."""

import json

import pytest
from support.indexed_documents import write_random_documents
from support.torchrun import run_torchrun

PRETRAIN = "-m megatron_ponder.pretrain"
VOCAB = 128


def _losses(metrics_file):
    """(kind, iteration) -> loss of the last record for it (a resumed run rewrites what it redoes)."""
    losses = {}
    for line in open(metrics_file):
        record = json.loads(line)
        losses[record["kind"], record["iteration"]] = record["loss"]
    return losses


@pytest.fixture(scope="module")
def data_prefix(tmp_path_factory):
    """80 random documents written with Megatron's IndexedDatasetBuilder (about 3 epochs are read)."""
    return write_random_documents(str(tmp_path_factory.mktemp("dali_e2e") / "docs"), 80, VOCAB, lengths=(4, 30))


@pytest.mark.slow
def test_dali_run_saved_and_resumed_matches_the_default_loader(tmp_path, data_prefix):
    base = ["--data-path", data_prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--split", "9,1,0", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
            "--train-iters", "4", "--lr-warmup-iters", "1", "--eval-iters", "1", "--eval-interval", "3",
            "--log-interval", "1", "--ponder-mode", "latent", "--jacobi-train-rounds", "2",
            "--data-cache-path", str(tmp_path / "cache")]
    default, dali, checkpoints = tmp_path / "default.jsonl", tmp_path / "dali.jsonl", tmp_path / "ckpt"
    run_torchrun(PRETRAIN, 2, base + ["--metrics-file", default])
    dali_args = base + ["--dataloader-type", "dali", "--metrics-file", dali]
    run_torchrun(PRETRAIN, 2, dali_args + ["--save", checkpoints, "--exit-interval", "2"])
    resumed = run_torchrun(PRETRAIN, 2, dali_args + ["--load", checkpoints, "--dali-py-workers", "1"])
    assert "resumed from" in resumed.stdout and "at iteration 2 (16 samples consumed)" in resumed.stdout
    expected = _losses(default)
    assert sorted(expected) == [("train", i) for i in (1, 2, 3, 4)] + [("valid", i) for i in (0, 3, 4)]
    got = _losses(dali)
    assert got == expected, {key: (got.get(key), want) for key, want in expected.items() if got.get(key) != want}
