"""``--ckpt-fully-parallel-save/-load`` at DP=2 (pretrain under torchrun, gloo, 2 CPU processes).

* The default save is fully parallel: both data-parallel ranks write a share of the bytes (the
  ``.metadata`` names, per stored item, the ``__<rank>_<n>.distcp`` file holding it), while with
  ``--no-ckpt-fully-parallel-save`` rank 0 writes every replicated tensor and rank 1 nothing. The
  two checkpoints hold bit-identical tensors.
* A resume with ``--ckpt-fully-parallel-load`` (each rank reads half and the ranks exchange the
  rest) continues bit for bit as the uninterrupted run.
* Resharding: the DP=2 fully parallel checkpoint loaded at TP=2 and the TP=2 one loaded at DP=2
  with the fully parallel load, each saved again as loaded (checkpoint_reshard_worker.py), hold
  the same global tensors bit for bit.
"""

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from megatron.core.dist_checkpointing import load_plain_tensors
from torch.distributed.checkpoint import FileSystemReader

from support.metrics import train_losses
from support.torchrun import run_torchrun

PRETRAIN = "-m megatron_ponder.pretrain"
RESHARD = Path(__file__).with_name("checkpoint_reshard_worker.py")
BASE = [
    "--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr-warmup-iters", "2", "--eval-iters", "0", "--log-interval", "1", "--ponder-mode", "latent",
    "--jacobi-train-rounds", "1,3", "--train-iters", "8",
]
TP2 = ["--tensor-model-parallel-size", "2"]
SAVED_AT = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run's losses, and the checkpoints of iteration 4 saved at DP=2 with and
    without the fully parallel save."""
    root = tmp_path_factory.mktemp("fully_parallel")
    run_torchrun(PRETRAIN, 2, BASE + ["--metrics-file", root / "uninterrupted.jsonl"])
    for name, flags in (("parallel", []), ("plain", ["--no-ckpt-fully-parallel-save"])):
        run_torchrun(PRETRAIN, 2, BASE + flags + ["--save", root / name, "--exit-interval", str(SAVED_AT),
                                                  "--metrics-file", root / f"{name}.jsonl"])
    return root


def _folder(root) -> str:
    return str(Path(root) / f"iter_{SAVED_AT:07d}")


def _bytes_by_rank(folder) -> Counter:
    """Bytes of tensor/object payload each rank wrote, from the ``.metadata`` (``__<rank>_<n>.distcp``)."""
    written = Counter()
    for info in FileSystemReader(folder).read_metadata().storage_data.values():
        rank = int(re.fullmatch(r"__(\d+)_\d+\.distcp", info.relative_path).group(1))
        written[rank] += info.length
    return written


def _global_tensors(folder):
    """Every tensor of the checkpoint as one global tensor (model and optimizer), by key."""
    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            elif torch.is_tensor(value):
                yield f"{prefix}{key}", value

    return dict(flat(load_plain_tensors(folder)))


def _assert_same_tensors(folder, reference):
    got, want = _global_tensors(folder), _global_tensors(reference)
    assert sorted(got) == sorted(want) and any(key.startswith("optimizer.") for key in want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.slow
def test_each_data_parallel_rank_writes_a_share(runs, megatron_world_of_one):
    parallel, plain = _bytes_by_rank(_folder(runs / "parallel")), _bytes_by_rank(_folder(runs / "plain"))
    total = sum(parallel.values())
    # The same payload (up to the pickled objects' framing), not written twice.
    assert sum(plain.values()) == pytest.approx(total, rel=1e-3), (plain, parallel)
    assert sorted(parallel) == [0, 1] and min(parallel.values()) > 0.4 * total, parallel
    assert plain[0] > 0.99 * total, plain  # without the wrapper: DP rank 0 writes the replicated tensors
    _assert_same_tensors(_folder(runs / "parallel"), _folder(runs / "plain"))
    # The saving runs trained as the uninterrupted one up to the save.
    uninterrupted = train_losses(runs / "uninterrupted.jsonl")
    for name in ("parallel", "plain"):
        assert train_losses(runs / f"{name}.jsonl") == {i: uninterrupted[i] for i in range(1, SAVED_AT + 1)}


@pytest.mark.slow
def test_fully_parallel_load_resumes_bit_exact(runs, tmp_path):
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(runs / "parallel", checkpoints)
    metrics = tmp_path / "resumed.jsonl"
    resumed = run_torchrun(PRETRAIN, 2, BASE + ["--load", checkpoints, "--ckpt-fully-parallel-load",
                                                "--metrics-file", metrics])
    assert f"at iteration {SAVED_AT}" in resumed.stdout
    uninterrupted = train_losses(runs / "uninterrupted.jsonl")
    assert train_losses(metrics) == {i: uninterrupted[i] for i in range(SAVED_AT + 1, 9)}  # bit for bit


@pytest.mark.slow
def test_saved_at_one_layout_loads_at_another(runs, tmp_path, megatron_world_of_one):
    """DP=2 -> TP=2 (fully parallel load over a DP group of one) and back TP=2 -> DP=2 (the fully
    parallel load shares the reading out): the weights and optimizer state are those saved."""
    at_tp2, back_at_dp2 = tmp_path / "tp2", tmp_path / "dp2"
    run_torchrun(RESHARD, 2, BASE + TP2 + ["--load", runs / "parallel", "--save", at_tp2, "--ckpt-fully-parallel-load"])
    _assert_same_tensors(_folder(at_tp2), _folder(runs / "parallel"))
    run_torchrun(RESHARD, 2, BASE + ["--load", at_tp2, "--save", back_at_dp2, "--ckpt-fully-parallel-load"])
    _assert_same_tensors(_folder(back_at_dp2), _folder(runs / "parallel"))
    assert sorted(_bytes_by_rank(_folder(back_at_dp2))) == [0, 1]
