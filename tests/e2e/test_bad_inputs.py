"""The bad-input table: every case exits with status 2 and exactly one stderr line ``error: ...``
naming the problem, never a traceback; a case that could damage a run leaves its checkpoint
folder (or an export folder) byte for byte as it was.

Cases run in this process (``pretrain.main(argv)`` / ``convert_checkpoint.main(argv)``) to keep
the table cheap; the checks under test fail before any model is built, except the resumes from
damaged checkpoints. Process-boundary cases (torchrun ranks, signals) are in
test_pretrain_errors.py and test_pretrain_resume.py.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.indexed_documents import write_random_documents
from support.torchrun import REPO, child_env

TINY = ["--seq-length", "32", "--micro-batch-size", "2", "--eval-iters", "0", "--log-interval", "1"]


def _pretrain(argv):
    from megatron_ponder.pretrain import main

    return main([str(a) for a in argv])


def _convert(argv):
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main([str(a) for a in argv])


def _exit_code(call, argv):
    try:
        return call(argv)
    except SystemExit as stop:  # argparse
        return stop.code


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run saved at iteration 2 (latent mode, the cpu-tiny preset, hidden size 128)."""
    folder = tmp_path_factory.mktemp("run") / "run"
    assert _pretrain(["--mock-data", "--train-iters", "2", "--save", folder, *TINY]) == 0
    return folder


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def assert_one_error_line(capfd, code, *fragments):
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


NUMERIC = [
    (["--micro-batch-size", "0"], "--micro-batch-size must be in [1, inf), got 0"),
    (["--log-interval", "0"], "--log-interval must be in [1, inf)"),
    (["--lr=-1e-3"], "--lr must be in [0, inf), got -0.001"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--train-iters", "0"], "--train-iters must be in [1, inf)"),
    (["--hidden-dropout", "1.5"], "--hidden-dropout must be in [0, 1)"),
    (["--eval-iters", "-1"], "--eval-iters must be in [0, inf)"),
    (["--exit-duration-in-mins", "0"], "--exit-duration-in-mins must be in (0, inf)"),
    (["--nan-skip-limit", "0"], "--nan-skip-limit"),
    (["--keep-last-checkpoints", "0"], "--keep-last-checkpoints"),
    (["--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr 0.01 is above --lr 0.001"),
    (["--ckpt-format", "torch"], "--ckpt-format: invalid choice"),
    (["--peak-tflops", "0"], "--peak-tflops must be in (0, inf), got 0"),
    (["--tensorboard-log-interval", "0"], "--tensorboard-log-interval must be in [1, inf)"),
]


@pytest.mark.parametrize("flags,fragment", NUMERIC, ids=[" ".join(f) for f, _ in NUMERIC])
def test_numeric_flags(capfd, flags, fragment):
    assert_one_error_line(capfd, _exit_code(_pretrain, ["--mock-data", *flags]), fragment)


def test_dali_workers_are_capped_with_a_reason(capfd):
    from megatron_ponder.training.arguments import parse_args, validate_args

    args = parse_args(["--mock-data", "--dataloader-type", "dali", "--dali-py-workers", "1000"])
    validate_args(args, 1)
    assert args.dali_py_workers == os.cpu_count()
    assert "--dali-py-workers 1000 capped at" in capfd.readouterr().out


FOLDER_CASES = {
    "save holds another run": (lambda run: ["--save", run], ["already holds another run", "--load"]),
    "load typo": (lambda run: ["--save", run, "--load", f"{run}_typo"], ["_typo does not exist"]),
    "other method flags": (lambda run: ["--save", run, "--load", run, "--ponder-mode", "ponder"],
                           ["--ponder-mode ponder (checkpoint: latent)", "--finetune"]),
    "other shape": (lambda run: ["--save", run, "--load", run, "--hidden-size", "64"],
                    ["--hidden-size 64 (checkpoint: 128)", "--use-checkpoint-args"]),
    "finetune over own checkpoints": (lambda run: ["--save", run, "--load", run, "--finetune"],
                                      ["--finetune starts a new run"]),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_run_folder_is_not_overwritten(capfd, run_dir, case):
    argv, fragments = FOLDER_CASES[case]
    before = snapshot(run_dir)
    assert_one_error_line(capfd, _pretrain(["--mock-data", "--train-iters", "4", *TINY, *argv(run_dir)]), *fragments)
    assert snapshot(run_dir) == before


def _hold_run_lock(folder: Path, record: str) -> subprocess.Popen:
    """Another process holding the run's lock (a record lock belongs to a process: this one's own
    would not conflict) after writing ``record`` into it; it holds until killed."""
    code = ("import fcntl, sys, time\n"
            f"handle = open({str(folder / '.megatron_ponder.lock')!r}, 'a+')\n"
            "fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            f"handle.seek(0); handle.truncate(); handle.write({record!r}); handle.flush()\n"
            "print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_run_on_a_locked_folder_refuses(capfd, run_copy):
    holder = _hold_run_lock(run_copy, f"{os.getpid()} {socket.gethostname()}\n")  # a running job
    before = snapshot(run_copy)
    try:
        code = _pretrain(["--mock-data", "--train-iters", "4", *TINY, "--save", run_copy, "--load", run_copy])
    finally:
        holder.kill()
        holder.wait()
    assert_one_error_line(capfd, code, "is in use by another run", f"pid {os.getpid()} on", ".megatron_ponder.lock")
    assert snapshot(run_copy) == before


def test_the_refusal_does_not_blame_a_dead_pid(capfd, run_copy):
    """The lock file names a trainer that has ended while something else holds the lock: say so."""
    holder = _hold_run_lock(run_copy, f"999999999 {socket.gethostname()}\n")
    try:
        code = _pretrain(["--mock-data", "--train-iters", "4", *TINY, "--save", run_copy, "--load", run_copy])
    finally:
        holder.kill()
        holder.wait()
    assert_one_error_line(capfd, code, "a process other than the recorded pid 999999999, which has ended")


def test_stale_lock_of_a_dead_process_does_not_block(capfd, run_copy):
    (run_copy / ".megatron_ponder.lock").write_text("999999999 some-host\n")  # SIGKILLed holder
    # --train-iters 2 = the checkpoint's: resume, nothing left to train, exit 0.
    assert _pretrain(["--mock-data", "--train-iters", "2", *TINY, "--save", run_copy, "--load", run_copy]) == 0
    assert "left by pid 999999999 on some-host, which ended without releasing it" in capfd.readouterr().out


def _damage(folder: Path, kind: str) -> str:
    """Damage the checkpoint of iteration 2; the fragment the error line must hold.

    ``kind``: what is damaged, then whose message names it: the checksums every checkpoint now
    carries, or (a checkpoint saved before them: checksums.json removed) the file-by-file diagnosis.
    """
    damage, checked_by = kind.rsplit(", ", 1)
    iteration = folder / "iter_0000002"
    shard = iteration / "__0_0.distcp"
    if damage == "corrupt shard":
        data = bytearray(shard.read_bytes())
        data[100:4000] = os.urandom(3900)
        shard.write_bytes(bytes(data))
        damaged, diagnosis = shard.name, "__0_0.distcp: corrupt at"
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        damaged, diagnosis = shard.name, "__0_0.distcp: truncated"
    else:
        (iteration / ".metadata").write_bytes(b"not a pickle")
        damaged, diagnosis = ".metadata", ".metadata: unreadable"
    if checked_by == "checksums":
        return f"{damaged}: checksum mismatch"
    (iteration / "checksums.json").unlink()
    return diagnosis


DAMAGE = [f"{damage}, {checked_by}" for damage in ("corrupt shard", "truncated shard", "bad metadata")
          for checked_by in ("checksums", "no checksums")]


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_from_a_damaged_checkpoint_names_the_file(capfd, run_copy, kind):
    fragment = _damage(run_copy, kind)
    before = snapshot(run_copy)
    code = _pretrain(["--mock-data", "--train-iters", "4", *TINY, "--save", run_copy, "--load", run_copy])
    assert_one_error_line(capfd, code, "cannot load checkpoint", fragment)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("kind", DAMAGE)
def test_export_from_a_damaged_checkpoint_names_the_file(capfd, run_copy, tmp_path, kind):
    fragment = _damage(run_copy, kind)
    code = _convert(["export", "--load", run_copy, "--out", tmp_path / "hf"])
    assert_one_error_line(capfd, code, fragment)


def test_export_into_a_non_empty_folder_refuses_unless_overwrite(capfd, run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "foreign.bin").write_bytes(b"keep me")
    before = snapshot(out)
    assert_one_error_line(capfd, _convert(["export", "--load", run_dir, "--out", out]), "not an empty folder",
                          "--overwrite")
    assert snapshot(out) == before
    assert _convert(["export", "--load", run_dir, "--out", out, "--overwrite"]) == 0
    assert not (out / "foreign.bin").exists() and (out / "config.json").read_text() != "{}"


def test_import_into_a_run_folder_refuses(capfd, run_dir, tmp_path):
    before = snapshot(run_dir)
    code = _convert(["import", "--hf", tmp_path, "--save", run_dir])
    assert_one_error_line(capfd, code, "already holds checkpoints (latest iteration 2)", "back to iteration 0")
    assert snapshot(run_dir) == before


def test_import_from_a_missing_folder_fails_at_once(capfd, tmp_path):
    import time

    started = time.monotonic()
    code = _convert(["import", "--hf", "missing/path", "--save", tmp_path / "ckpt"])
    assert time.monotonic() - started < 10  # no Hub retries
    assert_one_error_line(capfd, code, "--hf missing/path is not a folder")


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data") / "docs")


def _null_data(prefix, vocab=512):
    return ["--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab),
            "--train-iters", "2", *TINY]


def test_index_dtype_that_does_not_match_the_bin(capfd, tmp_path):
    prefix = write_random_documents(str(tmp_path / "docs"), 50, 500)
    index = bytearray(Path(prefix + ".idx").read_bytes())
    assert index[17] == 8  # Megatron's dtype code of uint16, after the 9-byte magic and the version
    index[17] = 1  # uint8
    Path(prefix + ".idx").write_bytes(bytes(index))
    assert_one_error_line(capfd, _pretrain(_null_data(prefix)), "2-byte tokens but its index says uint8")


def test_token_ids_beyond_the_vocabulary(capfd, tmp_path):
    prefix = write_random_documents(str(tmp_path / "docs"), 50, 1000)
    assert_one_error_line(capfd, _pretrain(_null_data(prefix, vocab=512)), "holds token id 999",
                          "tokenizer has 512 ids", "another tokenizer")


def test_corpus_shorter_than_one_sample(capfd, tmp_path):
    prefix = write_random_documents(str(tmp_path / "docs"), 1, 500, lengths=(5, 6))
    assert_one_error_line(capfd, _pretrain(_null_data(prefix)), "has 6 tokens, fewer than one sample (33")


def test_split_without_validation_names_the_split(capfd, tmp_path):
    prefix = write_random_documents(str(tmp_path / "docs"), 200, 500)
    args = _null_data(prefix) + ["--split", "100", "--eval-iters", "1"]
    assert_one_error_line(capfd, _pretrain(args), "--split 100", "validation")


def test_full_disk_names_the_cause_and_keeps_the_previous_checkpoint(capfd, run_dir, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    size_mib = sum(len(b) for b in snapshot(run_dir).values()) // 2**20 + 4  # room for one checkpoint only
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        run = disk / "run"
        shutil.copytree(run_dir, run)
        before = snapshot(run)
        code = _pretrain(["--mock-data", "--train-iters", "3", *TINY, "--save", run, "--load", run,
                          "--override-opt_param-scheduler"])
        assert_one_error_line(capfd, code, "cannot write checkpoint", "iter_0000003", "No space left on device")
        after = snapshot(run)
        assert {k: v for k, v in after.items() if not k.startswith("iter_0000003")} == before
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_failed_async_write_names_the_cause_and_keeps_the_previous_checkpoint(capfd, run_copy, monkeypatch):
    """--async-save: the background writer's shard files fail to open (fault injection); the
    finalization reports it like a synchronous save, and the pointer stays on iteration 2."""
    before = snapshot(run_copy)
    monkeypatch.setenv("PONDER_FAULT_INJECT", "async-write-fails:3")
    code = _pretrain(["--mock-data", "--train-iters", "3", *TINY, "--save", run_copy, "--load", run_copy,
                      "--override-opt_param-scheduler", "--async-save"])
    assert_one_error_line(capfd, code, "cannot write checkpoint", "iter_0000003", "Input/output error",
                          "the latest pointer still names the previous checkpoint")
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if not k.startswith("iter_0000003")} == before


@pytest.mark.parametrize("argv,fragment", [
    (["--gpus", "0"], "--gpus must be >= 1, got 0"),
    (["--preset", "pythia-2.8b", "--gpus", "1", "--gpu-memory-gib", "1", "--search"], "no layout fits on --gpus 1"),
], ids=["no gpus", "search finds nothing"])
def test_plan_run_refuses(argv, fragment):
    spec = importlib.util.spec_from_file_location("plan_run", REPO / "tools" / "plan_run.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as stop:  # exit status 1 with this one line on stderr
        tool.main(argv)
    assert str(stop.value.code).startswith("error: ") and fragment in str(stop.value.code)


def test_extending_train_iters_needs_a_scheduler_choice(capfd, run_copy):
    """The checkpoint's LR schedule decays over 2 iterations: resuming to 3 says which flag picks."""
    argv = ["--mock-data", "--train-iters", "3", *TINY, "--save", run_copy, "--load", run_copy]
    before = snapshot(run_copy)
    assert_one_error_line(capfd, _pretrain(argv), "LR/WD schedule", "--override-opt_param-scheduler")
    assert snapshot(run_copy) == before
    assert _pretrain(argv + ["--override-opt_param-scheduler"]) == 0
    assert (run_copy / "latest_checkpointed_iteration.txt").read_text() == "3"


def _bpe_tokenizer(folder: Path, words: str) -> Path:
    """A BPE tokenizer of 300 ids trained on ``words``: another text, another id for each string."""
    from megatron_ponder.data.tokenizer import train_bpe_tokenizer

    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("\n".join(f"{w} {w}{i} {w[::-1]}" for i, w in enumerate(words.split() * 40)))
    train_bpe_tokenizer([folder / "train.txt"], 300, folder / "tok")
    return folder / "tok"


def test_resume_with_another_tokenizer_of_the_same_vocabulary_size_refuses(capfd, tmp_path):
    first = _bpe_tokenizer(tmp_path / "a", "alpha beta gamma delta epsilon zeta eta theta iota kappa")
    second = _bpe_tokenizer(tmp_path / "b", "red green blue cyan magenta yellow black white orange violet")
    run = tmp_path / "run"
    common = ["--mock-data", "--tokenizer-type", "HuggingFaceTokenizer", *TINY]
    assert _pretrain([*common, "--tokenizer-model", first, "--train-iters", "1", "--save", run]) == 0
    capfd.readouterr()
    before = snapshot(run)
    resume = [*common, "--tokenizer-model", second, "--train-iters", "2", "--load", run]
    assert_one_error_line(capfd, _pretrain([*resume, "--save", run]), "was trained with another tokenizer",
                          "--finetune")
    assert snapshot(run) == before
    # A deliberate change: a new run from the weights.
    assert _pretrain([*resume, "--finetune", "--save", tmp_path / "finetuned"]) == 0


@pytest.mark.parametrize("number, cause, fix", [
    (errno.EDQUOT, "Disk quota exceeded", "raise it"),
    (errno.EFBIG, "File too large", "ulimit -f"),
    (errno.ENOSPC, "No space left on device", "free space"),
])
def test_storage_limits_are_named_with_their_fix(tmp_path, number, cause, fix):
    """A quota or a file-size limit gets its own cause and fix (it used to be a raw zip-writer message)."""
    from megatron_ponder.training.checkpointing.errors import write_failure

    wrapped = RuntimeError("Worker failure: unexpected pos 123")
    wrapped.__cause__ = OSError(number, os.strerror(number), str(tmp_path / "__0_0.distcp"))
    message = write_failure(str(tmp_path), wrapped)
    assert cause in message and fix in message and "the latest pointer still names the previous" in message


def test_a_file_size_limit_during_a_save_is_one_line(run_dir, tmp_path):
    """The real case: the shard writer hits RLIMIT_FSIZE (EFBIG; SIGXFSZ ignored, as a job scheduler's
    limit gives it) while writing iteration 3; the checkpoint of iteration 2 stays the latest."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = snapshot(run)
    limit = max(len(data) for data in before.values()) // 2  # below the size of the largest shard

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "megatron_ponder.pretrain", "--mock-data", "--train-iters", "3", *TINY, "--save",
         str(run), "--load", str(run), "--override-opt_param-scheduler"],
        # No C++ compiler on PATH: no torch.compile build files (larger than the limit) either.
        env={**child_env(), "PATH": str(tmp_path)}, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size, check=False)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "File too large" in errors[0] and "ulimit -f" in errors[0] and "iter_0000003" in errors[0]
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


@pytest.mark.parametrize("flag", ["--use-distributed-optimizer", "--bf16"])
def test_switching_the_optimizer_layout_on_resume_names_the_flag(capfd, run_copy, flag):
    """The checkpoint's optimizer state was saved without the flag (a bare KeyError before)."""
    argv = ["--mock-data", "--train-iters", "3", *TINY, "--save", run_copy, "--load", run_copy,
            "--override-opt_param-scheduler", flag]
    before = snapshot(run_copy)
    assert_one_error_line(capfd, _pretrain(argv), f"{flag} on (checkpoint: off)", "--no-load-optim")
    assert snapshot(run_copy) == before
    assert _pretrain(argv + ["--no-load-optim"]) == 0  # the way out it names works


def test_load_of_an_iter_folder_names_the_run_folder(capfd, run_dir, tmp_path):
    """Export takes an iter_* folder; training takes the run folder and says which one."""
    code = _pretrain(["--mock-data", "--train-iters", "3", *TINY, "--load", run_dir / "iter_0000002",
                      "--save", tmp_path / "new"])
    assert_one_error_line(capfd, code, "is one checkpoint (an iter_* folder)", f"--load {run_dir} ")


@pytest.mark.parametrize("flag", ["--save", "--tensorboard-dir", "--data-cache-path", "--metrics-file"])
def test_every_output_path_is_checked_before_the_model_is_built(capfd, tmp_path, monkeypatch, flag):
    """A path under a regular file cannot be created: one line naming the flag, before any model."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    import megatron_ponder.training.build as build

    monkeypatch.setattr(build, "build_training_state", lambda *a, **k: pytest.fail("the model was built"))
    code = _pretrain(["--mock-data", "--train-iters", "1", *TINY, flag, blocker / "sub" / "out"])
    assert_one_error_line(capfd, code, flag, "is not writable")


def test_a_metrics_file_that_is_a_folder_is_refused(capfd, tmp_path):
    assert_one_error_line(capfd, _pretrain(["--mock-data", "--train-iters", "1", *TINY, "--metrics-file", tmp_path]),
                          "--metrics-file", "is a folder")
