"""Bad input stops the entry point with one line `error: ...` (exit code 2), never a traceback."""

import re
import subprocess
import sys

import pytest

from support.torchrun import REPO, run_torchrun, child_env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny preprocessed corpus and its tokenizer."""
    from megatron_ponder.data.preprocess import preprocess_to_indexed_dataset
    from megatron_ponder.data.tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("corpus")
    text = folder / "docs.jsonl"
    import json

    with open(text, "w") as handle:
        for i in range(40):
            handle.write(json.dumps({"text": f"def function_{i}(x):\n    return x * {i} + {i * 7}\n" * 20}) + "\n")
    plain = folder / "plain.txt"
    plain.write_text(open(text).read())
    tokenizer = train_bpe_tokenizer([plain], 300, folder / "tokenizer")
    preprocess_to_indexed_dataset([text], str(folder / "docs"), tokenizer, append_eod=True, progress=False)
    return folder


def _single_process(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "megatron_ponder.pretrain", *map(str, args)], env=child_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _assert_one_line_error(done, *fragments, under_torchrun=False, nproc=2):
    if under_torchrun:
        # Every worker exits 2 (none is stopped by torchrun's SIGTERM); the workers print one line
        # (rank 0), then the agent adds what it always prints for a failed worker: a log line or
        # two, its ChildFailedError traceback (frames of torch/distributed only) and a summary
        # naming each rank's exit code. torchrun itself exits 1.
        assert done.returncode == 1, done.stderr[-2000:]
        assert done.stderr.count("exitcode  : 2 ") == nproc and "Signal 15" not in done.stderr, done.stderr[-3000:]
        lines = done.stderr.splitlines()
        assert lines[0].startswith("error:"), done.stderr[-3000:]
        agent = lines[1:]
        assert agent and re.match(r"[WEI]\d{4} ", agent[0]), done.stderr[-3000:]  # torchrun's log format
        frames = [line for line in agent if line.lstrip().startswith('File "')]
        assert all("torch/distributed" in line or "<frozen runpy>" in line for line in frames), frames
        assert "ChildFailedError" in done.stderr and "[rank" not in done.stderr
    else:
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, done.stderr[-2000:]  # under torchrun too: rank 0 prints it
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def _data_args(corpus, prefix="docs"):
    return ["--data-path", corpus / prefix, "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", corpus / "tokenizer", "--seq-length", "32", "--train-iters", "2"]


def test_missing_dataset_files(corpus):
    _assert_one_line_error(_single_process(_data_args(corpus, "nothing_here")), "nothing_here", "preprocess_data.py")


def test_truncated_bin_file(corpus, tmp_path):
    for suffix in (".bin", ".idx"):
        (tmp_path / f"cut{suffix}").write_bytes((corpus / f"docs{suffix}").read_bytes())
    data = (tmp_path / "cut.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    args = ["--data-path", tmp_path / "cut", "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", corpus / "tokenizer", "--seq-length", "32", "--train-iters", "2"]
    _assert_one_line_error(_single_process(args), "truncated")


def test_tokenizer_vocabulary_larger_than_the_model(corpus):
    _assert_one_line_error(_single_process(_data_args(corpus) + ["--vocab-size", "64"]), "64")


def test_unknown_preset():
    done = _single_process(["--preset", "gpt-5", "--mock-data"])
    assert done.returncode == 2 and "invalid choice: 'gpt-5'" in done.stderr and "Traceback" not in done.stderr


def test_unwritable_save_folder():
    _assert_one_line_error(_single_process(["--mock-data", "--save", "/proc/megatron_ponder_ckpt"]), "--save", "not writable")


def test_heads_not_divisible_by_query_groups():
    _assert_one_line_error(_single_process(["--mock-data", "--num-query-groups", "3"]), "--num-query-groups 3")


def test_parallel_sizes_that_do_not_divide_the_world():
    done = run_torchrun("-m megatron_ponder.pretrain", 2, ["--mock-data", "--tensor-model-parallel-size", "3"], check=False)
    _assert_one_line_error(done, "world size 2", "3", under_torchrun=True)


def test_sequence_length_that_splits_token_groups():
    done = run_torchrun("-m megatron_ponder.pretrain", 2,
                        ["--mock-data", "--tensor-model-parallel-size", "2", "--sequence-parallel", "--seq-length", "33"],
                        check=False)
    _assert_one_line_error(done, "--seq-length 33", "whole tokens", under_torchrun=True)


def test_bad_numeric_flag_under_torchrun():
    """Found before the process group exists: the ranks meet on torchrun's store, then exit 2."""
    done = run_torchrun("-m megatron_ponder.pretrain", 2, ["--mock-data", "--micro-batch-size", "0"], check=False)
    _assert_one_line_error(done, "--micro-batch-size must be in [1, inf), got 0", under_torchrun=True)


def test_data_error_under_torchrun(corpus):
    """Found after the process group exists (data set-up): one line, both ranks exit 2."""
    done = run_torchrun("-m megatron_ponder.pretrain", 2, _data_args(corpus) + ["--vocab-size", "64"], check=False)
    _assert_one_line_error(done, "64", under_torchrun=True)


@pytest.mark.parametrize("save_mode", [[], ["--async-save"]], ids=["sync", "async"])
def test_pointer_write_failing_on_rank_0_stops_every_rank(corpus, tmp_path, save_mode):
    """Only rank 0 writes the latest pointer: when that fails (a full disk, injected at iteration
    4), rank 1 must not wait at the next collective until the timeout. Both ranks exit 2 at once
    with rank 0's line, and the pointer still names iteration 2."""
    save = tmp_path / "ckpt"
    args = _data_args(corpus) + ["--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "6",
                                 "--eval-iters", "0", "--save", save, "--save-interval", "2", *save_mode]
    done = run_torchrun("-m megatron_ponder.pretrain", 2, args, check=False, timeout=240,
                        env=child_env(PONDER_FAULT_INJECT="pointer-write-fails:4"))
    _assert_one_line_error(done, "latest_checkpointed_iteration.txt", "No space left on device",
                           "still names the previous checkpoint", under_torchrun=True)
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert not (save / "latest_checkpointed_iteration.txt.tmp").exists()
