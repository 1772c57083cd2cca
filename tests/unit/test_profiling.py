"""Profiling's pieces (issue 25, item 3): the passes' range names, the ranges' switch (nothing at all
when off), and the loop hooks of training/profiling.py on the paths a CPU cannot run for real
(nsys's capture range, CUDA memory history), with torch's CUDA calls replaced by recorders."""

import argparse
import contextlib

import pytest
import torch

from megatron_ponder.model.passes import pass_range, pass_range_name, plan_passes
from megatron_ponder.runtime import trace_ranges
from megatron_ponder.training import profiling
from megatron_ponder.training.arguments import parse_args


@pytest.fixture(autouse=True)
def ranges_off_afterwards():
    yield
    trace_ranges.set_trace_ranges(None)


def test_pass_names_count_the_plan_and_the_thought_or_round():
    ponder = plan_passes("ponder", ponder_steps=3)
    assert [pass_range_name(p, ponder) for p in ponder] == [
        "pass 1/4 ponder feedback", "pass 2/4 ponder feedback", "pass 3/4 ponder feedback", "pass 4/4 final"]
    latent = plan_passes("latent", num_latent_thoughts=1, jacobi_rounds=3)
    assert [pass_range_name(p, latent) for p in latent] == [
        "pass 1/5 initial thought 1", "pass 2/5 jacobi round 1", "pass 3/5 jacobi round 2",
        "pass 4/5 jacobi round 3", "pass 5/5 final"]


def test_ranges_off_cost_no_name_and_no_range():
    p = plan_passes("ponder", ponder_steps=1)[0]
    named = []
    assert trace_ranges.trace_ranges_kind() is None
    assert trace_ranges.trace_range(lambda: named.append(1)) is trace_ranges.trace_range(lambda: named.append(2))
    assert isinstance(pass_range(p, (p,)), contextlib.nullcontext) and named == []


def test_record_function_ranges_reach_the_pytorch_profiler():
    plan = plan_passes("latent", num_latent_thoughts=1, jacobi_rounds=1)
    trace_ranges.set_trace_ranges("record_function")
    with torch.profiler.profile() as prof:
        for p in plan:
            with pass_range(p, plan):
                torch.ones(2) * 2
    names = [event.name for event in prof.events() if event.name.startswith("pass ")]
    assert names == ["pass 1/3 initial thought 1", "pass 2/3 jacobi round 1", "pass 3/3 final"]


def test_nvtx_ranges_push_and_pop_each_pass(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: calls.append(("push", name)))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: calls.append(("pop",)))
    plan = plan_passes("ponder", ponder_steps=1)
    trace_ranges.set_trace_ranges("nvtx")
    for p in plan:
        with pass_range(p, plan):
            pass
    assert calls == [("push", "pass 1/2 ponder feedback"), ("pop",), ("push", "pass 2/2 final"), ("pop",)]
    with pytest.raises(ValueError, match="trace range kind"):
        trace_ranges.set_trace_ranges("nsys")


def _args(*flags):
    return parse_args(["--mock-data", "--train-iters", "10", *flags])


class _CudaRecorder:
    """torch.cuda's profiler start/stop, emit_nvtx and memory-history calls, recorded in order."""

    def __init__(self, monkeypatch):
        self.calls = []
        recorder = self

        class Cudart:
            def cudaProfilerStart(self):
                recorder.calls.append("cudaProfilerStart")
                return 0

            def cudaProfilerStop(self):
                recorder.calls.append("cudaProfilerStop")
                return 0

        class EmitNvtx:
            def __init__(self, record_shapes=False):
                recorder.calls.append(f"emit_nvtx(record_shapes={record_shapes})")

            def __enter__(self):
                recorder.calls.append("emit_nvtx enter")

            def __exit__(self, *exc):
                recorder.calls.append("emit_nvtx exit")

        monkeypatch.setattr(torch.cuda, "cudart", lambda: Cudart())
        monkeypatch.setattr(torch.cuda, "check_error", lambda code: None)
        monkeypatch.setattr(torch.autograd.profiler, "emit_nvtx", EmitNvtx)
        monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                            lambda enabled="all", **kw: self.calls.append(f"record_memory_history({enabled}, {kw})"))
        monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", lambda path: self.calls.append(f"dump {path}"))
        monkeypatch.setattr(torch._C, "_cuda_attach_out_of_memory_observer",
                            lambda observer: self.calls.append("oom observer"), raising=False)


def _run_loop(profiler, start_iteration, train_iters, calls):
    """The loop's hook order (pretrain.train); each step notes which ranges are on."""
    try:
        for iteration in range(start_iteration, train_iters):
            profiler.step_begins(iteration)
            calls.append(f"step {iteration + 1} ranges {trace_ranges.trace_ranges_kind()}")
            profiler.step_ended(iteration + 1)
    finally:
        profiler.close()


def test_nsys_path_captures_global_iterations_start_plus_one_to_end(monkeypatch):
    cuda = _CudaRecorder(monkeypatch)
    args = _args("--profile", "--profile-step-start", "2", "--profile-step-end", "4", "--record-shapes")
    _run_loop(profiling.StepProfiler(args, rank=0, world_size=1), 0, 6, cuda.calls)
    assert cuda.calls == [
        "step 1 ranges None", "step 2 ranges None",
        "cudaProfilerStart", "emit_nvtx(record_shapes=True)", "emit_nvtx enter",
        "step 3 ranges nvtx", "step 4 ranges nvtx",
        "cudaProfilerStop", "emit_nvtx exit",
        "step 5 ranges None", "step 6 ranges None",
    ]


def test_a_rank_not_listed_is_not_profiled(monkeypatch):
    cuda = _CudaRecorder(monkeypatch)
    args = _args("--profile", "--profile-step-start", "0", "--profile-step-end", "1", "--profile-ranks", "1",
                 "--record-memory-history")
    _run_loop(profiling.StepProfiler(args, rank=0, world_size=2), 0, 2, cuda.calls)
    assert cuda.calls == ["step 1 ranges None", "step 2 ranges None"]
    assert profiling.profiled_ranks([], 3) == [0, 1, 2]  # the flag without ranks: every rank


def test_memory_history_from_the_build_and_snapshots_each_log_interval(monkeypatch, tmp_path):
    cuda = _CudaRecorder(monkeypatch)
    path = tmp_path / "mem.pickle"
    args = _args("--record-memory-history", "--memory-snapshot-path", str(path), "--log-interval", "2",
                 "--profile-ranks", "1")
    profiler = profiling.StepProfiler(args, rank=1, world_size=2)  # built before the model
    assert cuda.calls == [
        "record_memory_history(all, {'context': 'all', 'stacks': 'python', 'max_entries': 100000})", "oom observer"]
    _run_loop(profiler, 4, 9, cuda.calls)  # a resumed run: first step 5, then every 2nd
    snapshot = f"dump {tmp_path / 'mem_1.pickle'}"
    assert cuda.calls[2:] == [
        "step 5 ranges None", snapshot, "step 6 ranges None", snapshot, "step 7 ranges None",
        "step 8 ranges None", snapshot, "step 9 ranges None", "record_memory_history(None, {})"]


def test_pytorch_profiler_window_follows_megatrons_schedule(tmp_path):
    """start 3, end 5 from iteration 0: the log's iterations 3 and 4 recorded; ranges on from the
    warm-up step, off once the trace is written; a second profiler never starts."""
    args = _args("--profile", "--use-pytorch-profiler", "--profile-step-start", "3", "--profile-step-end", "5",
                 "--save", str(tmp_path))
    profiler = profiling.StepProfiler(args, rank=0, world_size=1)
    seen = []
    _run_loop(profiler, 0, 7, seen)
    assert seen == ["step 1 ranges None", "step 2 ranges record_function", "step 3 ranges record_function",
                    "step 4 ranges record_function", "step 5 ranges None", "step 6 ranges None",
                    "step 7 ranges None"]
    assert profiler.trace_path and profiler.trace_path.startswith(str(tmp_path / "profile" / "rank0."))
    import json

    with open(profiler.trace_path) as trace:
        steps = [e["name"] for e in json.load(trace)["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")]
    assert steps == ["ProfilerStep#3", "ProfilerStep#4"]


def test_profiling_flags_have_megatrons_defaults():
    args = parse_args(["--mock-data"])
    assert (args.profile, args.profile_step_start, args.profile_step_end, args.profile_ranks,
            args.use_pytorch_profiler, args.record_memory_history, args.memory_snapshot_path) == (
        False, 10, 12, [0], False, False, "snapshot.pickle")
    assert parse_args(["--mock-data", "--profile-ranks"]).profile_ranks == []
    assert isinstance(profiling.add_profiling_args(argparse.ArgumentParser()), type(None))
