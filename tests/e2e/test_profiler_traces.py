"""--profile --use-pytorch-profiler on a tiny CPU run (issue 25, item 3): the trace file is written
once, on the ranks of --profile-ranks only, opens as Chrome-trace JSON (what TensorBoard's
profiler tab and Perfetto read), holds the steps Megatron-LM's schedule records and every pass of
the method as a named range; the combinations that cannot work on this machine stop with one line.
"""

import glob
import json
import os

import pytest

from megatron_ponder.pretrain import main
from support.torchrun import run_torchrun

TINY = ["--mock-data", "--seq-length", "16", "--micro-batch-size", "1", "--global-batch-size", "2",
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "48",
        "--vocab-size", "64", "--eval-iters", "0", "--log-interval", "1", "--train-iters", "4"]
PROFILE = ["--profile", "--use-pytorch-profiler", "--profile-step-start", "2", "--profile-step-end", "3"]


def _trace_events(folder):
    """The one trace file in ``folder``: (file name, its events)."""
    traces = glob.glob(os.path.join(folder, "*.pt.trace.json"))
    assert len(traces) == 1, traces
    with open(traces[0]) as trace:
        return os.path.basename(traces[0]), json.load(trace)["traceEvents"]


def _names(events, prefix):
    return [event["name"] for event in events if str(event.get("name", "")).startswith(prefix)]


def test_pytorch_profiler_writes_one_trace_with_the_step_and_every_pass(tmp_path, capsys):
    save = tmp_path / "run"
    assert main([*TINY, *PROFILE, "--ponder-mode", "ponder", "--ponder-steps", "3", "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert "profiling rank 0: iterations 2..2 -> a trace in " + str(save / "profile") in out
    name, events = _trace_events(save / "profile")  # no --tensorboard-dir: <--save>/profile
    assert name.startswith("rank0.")
    # schedule(wait=1, warmup=1, active=1): the second step of the launch, and only it.
    assert _names(events, "ProfilerStep#") == ["ProfilerStep#2"]
    # One training step = one microbatch... twice (global batch 2): every pass of each, in order.
    passes = ["pass 1/4 ponder feedback", "pass 2/4 ponder feedback", "pass 3/4 ponder feedback", "pass 4/4 final"]
    assert _names(events, "pass ") == passes * 2
    assert f"trace written to {save / 'profile' / name}" in out


def test_latent_passes_are_named_by_thought_and_round_in_the_tensorboard_dir(tmp_path):
    board = tmp_path / "tensorboard"
    assert main([*TINY, *PROFILE, "--ponder-mode", "latent", "--num-latent-thoughts", "2",
                 "--jacobi-train-rounds", "2,2", "--tensorboard-dir", str(board)]) == 0
    _, events = _trace_events(board)  # Megatron-LM's place: beside the event files
    assert _names(events, "pass ") == ["pass 1/5 initial thought 1", "pass 2/5 initial thought 2",
                                       "pass 3/5 jacobi round 1", "pass 4/5 jacobi round 2", "pass 5/5 final"] * 2


def test_only_the_listed_rank_profiles(tmp_path):
    """Two gloo processes (DP=2), --profile-ranks 1: rank 1's trace, nothing from rank 0."""
    save = tmp_path / "run"
    done = run_torchrun("-m megatron_ponder.pretrain", 2,
                        [*TINY, *PROFILE, "--ponder-mode", "ponder", "--ponder-steps", "1", "--profile-ranks", "1",
                         "--save", save])
    name, events = _trace_events(save / "profile")
    assert name.startswith("rank1.")
    assert _names(events, "pass ") == ["pass 1/2 ponder feedback", "pass 2/2 final"]  # one microbatch per rank
    assert "profiling rank 1: iterations 2..2" in done.stdout and "profiling rank 0" not in done.stdout


@pytest.mark.parametrize("flags, message", [
    (["--profile", "--use-pytorch-profiler", "--profile-step-start", "3", "--profile-step-end", "3", "--save", "S"],
     "--profile-step-start 3 --profile-step-end 3 is no range of steps: give 0 <= start < end"),
    (["--profile", "--use-pytorch-profiler", "--profile-step-start", "2", "--profile-step-end", "9", "--save", "S"],
     "--profile-step-end 9 is past --train-iters 4"),
    (["--profile", "--profile-step-start", "1", "--profile-step-end", "2"],
     "--profile without --use-pytorch-profiler is nsys's capture range (cudaProfilerStart/Stop) and needs CUDA: "
     "add --use-pytorch-profiler"),
    (["--record-memory-history"],
     "--record-memory-history records the CUDA caching allocator's history and needs a GPU (this machine has "
     "none): drop the flag"),
    (["--profile", "--use-pytorch-profiler", "--profile-step-start", "1", "--profile-step-end", "2"],
     "give --tensorboard-dir DIR or --save DIR"),
    (["--profile", "--use-pytorch-profiler", "--profile-step-start", "1", "--profile-step-end", "2", "--save", "S",
      "--profile-ranks", "0", "3"], "--profile-ranks 3: this run has ranks 0..0"),
], ids=["empty-range", "past-the-run", "nsys-on-cpu", "memory-history-on-cpu", "no-folder", "rank-outside"])
def test_what_cannot_work_here_is_one_line(flags, message, tmp_path, capsys):
    flags = [str(tmp_path / "run") if flag == "S" else flag for flag in flags]
    assert main([*TINY, "--ponder-mode", "none", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
