"""--profile's nsys path and --record-memory-history on a real GPU (issue 25, item 3): torch's real
cudart profiler start/stop, emit_nvtx and NVTX ranges around a model step in both methods, and a
memory snapshot that holds the step's allocations with their Python stacks. (The CPU suite checks
the same hooks with recorders: tests/unit/test_profiling.py, tests/fake_gpu/test_profiling_ranges.py.)"""

import pickle

import pytest
import torch

from support.gpu_models import loss_and_grads, te_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _args(*flags):
    from megatron_ponder.training.arguments import parse_args

    return parse_args(["--mock-data", "--train-iters", "4", "--log-interval", "1", *flags])


@pytest.mark.parametrize("mode", ["ponder", "latent1"])
def test_nsys_path_runs_a_step_inside_real_nvtx_ranges(megatron_world_of_one, mode, monkeypatch):
    from megatron_ponder.runtime.trace_ranges import trace_ranges_kind
    from megatron_ponder.training.profiling import StepProfiler

    pushed = []
    real_push = torch.cuda.nvtx.range_push
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: (pushed.append(name), real_push(name))[1])
    model = te_model(mode, transformer_impl="local")
    profiler = StepProfiler(_args("--profile", "--profile-step-start", "0", "--profile-step-end", "1",
                                  "--record-shapes"), rank=0, world_size=1)
    try:
        profiler.step_begins(0)  # cudaProfilerStart, emit_nvtx(record_shapes=True)
        assert trace_ranges_kind() == "nvtx" and profiler.nsys_capturing
        loss, grads = loss_and_grads(model)
        torch.cuda.synchronize()
        profiler.step_ended(1)  # cudaProfilerStop
    finally:
        profiler.close()
    assert trace_ranges_kind() is None and not profiler.nsys_capturing
    assert torch.isfinite(loss) and grads
    passes = [name for name in pushed if name.startswith("pass ")]
    assert passes and passes[-1].endswith("final") and passes[0].startswith("pass 1/")


def test_memory_history_snapshot_holds_the_steps_allocations(megatron_world_of_one, tmp_path):
    from megatron_ponder.training.profiling import StepProfiler

    args = _args("--record-memory-history", "--memory-snapshot-path", str(tmp_path / "snapshot.pickle"))
    profiler = StepProfiler(args, rank=0, world_size=1)  # before the model, as pretrain builds it
    try:
        model = te_model("ponder", transformer_impl="local")
        profiler.step_begins(0)
        loss_and_grads(model)
        profiler.step_ended(1)  # the first step's snapshot
    finally:
        profiler.close()
    path = tmp_path / "snapshot_0.pickle"
    with open(path, "rb") as snapshot_file:
        snapshot = pickle.load(snapshot_file)
    events = [event for trace in snapshot["device_traces"] for event in trace]
    allocations = [event for event in events if event["action"] == "alloc"]
    assert allocations and snapshot["segments"]
    assert any(frame["filename"].endswith("ponder_gpt.py") for event in allocations for frame in event["frames"])
