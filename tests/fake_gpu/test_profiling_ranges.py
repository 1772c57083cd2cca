"""--profile's nsys path on the fake GPU (issue 25, item 3): the training step runs on the device with
every pass inside its NVTX range (``run_plan`` on one stage, the looped pipeline's chunks at PP=2),
and the ranges add no host synchronisation: none inside any pass's range, and a step with ranges
makes exactly the host reads that the same step without them makes.

torch's NVTX and cudart calls need a CUDA build; they are recorded here instead (the real ones are
tests/gpu/test_profiling_gpu.py's)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support.fake_gpu_runs import Layout, fake_gpu_run
from tools.fake_gpu import DEVICE_TYPE

pytestmark = pytest.mark.fake_gpu

PROFILE = ["--profile", "--profile-step-start", "2", "--profile-step-end", "3",
           "--jacobi-train-rounds", "2,2"]  # a fixed J: every step runs the same passes


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: a scalar read (``.item()``,
    ``bool(t)``) or a copy from the device to the host; ``in_pass`` of them inside a pass's range."""

    def __init__(self, depth):
        super().__init__()
        self.depth = depth  # the open NVTX ranges, kept by the push/pop recorders
        self.total = 0
        self.in_pass = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        reads = func is torch.ops.aten._local_scalar_dense.default
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0] if func is torch.ops.aten.copy_.default else out
            reads = source.device.type == DEVICE_TYPE and target.device.type == "cpu"
        if reads:
            self.total += 1
            if self.depth:
                self.in_pass.append((func.__name__, self.depth[-1]))
        return out


def _nsys_recorders(monkeypatch, calls, depth):
    class Cudart:
        def cudaProfilerStart(self):
            calls.append("cudaProfilerStart")
            return 0

        def cudaProfilerStop(self):
            calls.append("cudaProfilerStop")
            return 0

    class EmitNvtx:  # torch's needs a CUDA build; what it does to autograd is torch's own business
        def __init__(self, record_shapes=False):
            pass

        def __enter__(self):
            calls.append("emit_nvtx")

        def __exit__(self, *exc):
            pass

    def push(name):
        calls.append(name)
        depth.append(name)

    monkeypatch.setattr(torch.cuda, "cudart", lambda: Cudart())
    monkeypatch.setattr(torch.cuda, "check_error", lambda code: None)
    monkeypatch.setattr(torch.autograd.profiler, "emit_nvtx", EmitNvtx)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", push)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: depth.pop())


CASES = [("ponder", Layout("single")), ("latent", Layout("single")),
         ("ponder", Layout("pp2-first", pp=2, rank=0)), ("latent", Layout("pp2-last", pp=2, rank=1))]


@pytest.mark.parametrize("mode, layout", CASES, ids=[f"{mode}-{layout.name}" for mode, layout in CASES])
def test_nvtx_path_names_every_pass_on_the_device_without_host_reads(mode, layout, monkeypatch):
    from megatron_ponder.runtime.trace_ranges import trace_ranges_kind
    from megatron_ponder.training.profiling import StepProfiler
    from megatron_ponder.training.step import train_step

    calls, depth = [], []
    _nsys_recorders(monkeypatch, calls, depth)
    with fake_gpu_run(mode, layout, PROFILE + ["--profile-ranks", str(layout.rank)]) as run:
        profiler = StepProfiler(run.args, layout.rank, layout.world_size)
        stream = run.stream(run.train_set)
        reads = []
        # Steps 1-2 as usual, step 3 inside nsys's capture range. Step 2 is the plain step to
        # compare with: Megatron-Core 0.19's optimizer reads one scalar more in its first step.
        for iteration in range(3):
            microbatches = stream.next_step()
            profiler.step_begins(iteration)
            assert trace_ranges_kind() == ("nvtx" if iteration == 2 else None)
            with HostReads(depth) as counter:
                result = train_step(run.chunks, run.optimizer, microbatches, run.args.micro_batch_size,
                                    run.args.seq_length, iteration)
            profiler.step_ended(iteration + 1)
            reads.append(counter)
            assert not result.skipped
        profiler.close()
        assert {p.device.type for p in run.model.parameters()} == {DEVICE_TYPE}
    names = (["pass 1/4 ponder feedback", "pass 2/4 ponder feedback", "pass 3/4 ponder feedback", "pass 4/4 final"]
             if mode == "ponder" else
             ["pass 1/4 initial thought 1", "pass 2/4 jacobi round 1", "pass 3/4 jacobi round 2", "pass 4/4 final"])
    microbatches = 2 * layout.pp  # per step and rank (support.fake_gpu_runs.run_flags)
    assert calls[0] == "cudaProfilerStart" and calls[1] == "emit_nvtx" and calls[-1] == "cudaProfilerStop"
    ranges = calls[2:-1]
    assert sorted(ranges) == sorted(names * microbatches), ranges  # PP interleaves microbatches and passes
    if layout.pp == 1:
        assert ranges == names * microbatches
    assert not depth, f"ranges left open: {depth}"
    assert reads[2].in_pass == [], f"host reads inside a pass: {reads[2].in_pass}"
    assert reads[2].total == reads[1].total > 0  # the ranges add none (the counter sees the step's own)
