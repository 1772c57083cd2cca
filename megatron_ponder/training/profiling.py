"""Megatron-LM's profiling flags for the training loop: ``--profile`` (nsys or the PyTorch
profiler), ``--record-memory-history`` (CUDA allocator snapshots).

What each flag does, as in Megatron-LM's ``training.py`` (megatron-core 0.16-0.19):

* ``--profile`` on the ranks of ``--profile-ranks`` (default 0; listed without a value: every
  rank, as megatron-core 0.19's empty list):

  - with ``--use-pytorch-profiler``: ``torch.profiler.profile`` with Megatron's schedule
    ``wait=max(start-1, 0), warmup=1 if start > 0 else 0, active=end-start, repeat=1``, stepped at
    the top of every iteration, so the trace holds the steps that the log numbers start..end-1
    (counted from this launch's first step, as Megatron's profiler counts them). The trace is
    written once, as ``rank<R>.<ns>.pt.trace.json`` (``tensorboard_trace_handler``'s file name,
    which TensorBoard's PyTorch-profiler plugin and https://ui.perfetto.dev open), into
    ``--tensorboard-dir`` (Megatron-LM's place, beside the event files) or, without one, into
    ``<--save>/profile``. ``--pytorch-profiler-collect-shapes`` / ``-callstack`` add shapes and
    Python stacks (megatron-core 0.19's flags).
  - without it (the nsys path, CUDA only): ``cudaProfilerStart()`` at the top of iteration
    ``start`` and ``cudaProfilerStop()`` after step ``end``, i.e. the steps the log numbers
    start+1..end (global iterations), inside ``torch.autograd.profiler.emit_nvtx(record_shapes=
    --record-shapes)``. Run under ``nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi
    --capture-range-end=stop``.

  While either records, every pass of the method is a named range (``pass 3/5 jacobi round 2``,
  ``model/passes.pass_range``): NVTX for nsys, ``record_function`` for the PyTorch profiler
  (``runtime/trace_ranges.py``). Outside the window the ranges cost nothing.
* ``--record-memory-history`` (CUDA only) on the ranks of ``--profile-ranks``: the caching
  allocator's history (``torch.cuda.memory._record_memory_history``, 100k events with Python
  stacks) from before the model is built; a snapshot is written after the first step and every
  ``--log-interval`` steps to ``--memory-snapshot-path`` with the rank before the suffix
  (``snapshot_0.pickle``, megatron-core 0.19's naming), and on an out-of-memory error to
  ``snapshot_oom_rank-0.pickle``. Open them at https://pytorch.org/memory_viz.

Bad combinations (``--profile`` without the PyTorch profiler on a machine without CUDA, memory
history without CUDA, an empty step range) stop before the model is built with one line
(:func:`profiling_problem`).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional

import torch

from megatron_ponder.runtime.trace_ranges import set_trace_ranges

TRACE_SUBFOLDER = "profile"  # under --save when there is no --tensorboard-dir


def add_profiling_args(parser: argparse.ArgumentParser) -> None:
    """Megatron-LM's profiling flags (names, defaults and meanings)."""
    group = parser.add_argument_group("profiling (Megatron-LM's flags; docs/training.md, \"Profiling\")")
    group.add_argument("--profile", action="store_true",
                       help="profile steps --profile-step-start..--profile-step-end on --profile-ranks: with "
                            "--use-pytorch-profiler a trace file, else nsys's capture range (CUDA; run under "
                            "nsys profile --capture-range=cudaProfilerApi)")
    group.add_argument("--profile-step-start", type=int, default=10, help="global step to start profiling")
    group.add_argument("--profile-step-end", type=int, default=12, help="global step to stop profiling")
    group.add_argument("--profile-ranks", type=int, nargs="*", default=[0], metavar="RANK",
                       help="global ranks to profile (default 0; the flag with no rank: every rank)")
    group.add_argument("--use-pytorch-profiler", action="store_true",
                       help="--profile with torch.profiler: a trace (TensorBoard, Perfetto) in --tensorboard-dir, "
                            "or <--save>/profile without one")
    group.add_argument("--pytorch-profiler-collect-shapes", action="store_true",
                       help="the PyTorch profiler records tensor shapes")
    group.add_argument("--pytorch-profiler-collect-callstack", action="store_true",
                       help="the PyTorch profiler records Python call stacks")
    group.add_argument("--record-shapes", action="store_true",
                       help="nsys path: emit_nvtx records the input shapes of every op")
    group.add_argument("--record-memory-history", action="store_true",
                       help="CUDA: record the caching allocator's history on --profile-ranks and write "
                            "snapshots (--memory-snapshot-path) every --log-interval steps")
    group.add_argument("--memory-snapshot-path", default="snapshot.pickle",
                       help="memory snapshot file; the rank goes before the suffix (snapshot_0.pickle)")


def profiled_ranks(ranks: List[int], world_size: int) -> List[int]:
    """--profile-ranks as a list of ranks (the flag given without ranks: every rank)."""
    return list(range(world_size)) if not ranks else sorted(set(ranks))


def trace_folder(args) -> Optional[str]:
    """Where --use-pytorch-profiler writes its trace: --tensorboard-dir, else <--save>/profile."""
    if args.tensorboard_dir:
        return args.tensorboard_dir
    return os.path.join(args.save, TRACE_SUBFOLDER) if args.save else None


def profiling_problem(args, world_size: int) -> Optional[str]:
    """One line naming what is wrong with the profiling flags and the fix, or None."""
    cuda = torch.cuda.is_available()
    if args.record_memory_history and not cuda:
        return ("--record-memory-history records the CUDA caching allocator's history and needs a GPU (this "
                "machine has none): drop the flag")
    outside = [rank for rank in args.profile_ranks if not 0 <= rank < world_size]
    if (args.profile or args.record_memory_history) and outside:
        return f"--profile-ranks {' '.join(map(str, outside))}: this run has ranks 0..{world_size - 1}"
    if not args.profile:
        return None  # the other --profile-* flags wait for --profile, as in Megatron-LM
    start, end = args.profile_step_start, args.profile_step_end
    if start < 0 or end <= start:
        return (f"--profile-step-start {start} --profile-step-end {end} is no range of steps: give "
                "0 <= start < end")
    if args.train_iters is not None and end > args.train_iters:
        return (f"--profile-step-end {end} is past --train-iters {args.train_iters}: the profile would never be "
                "complete; lower --profile-step-end")
    if not args.use_pytorch_profiler and not cuda:
        return ("--profile without --use-pytorch-profiler is nsys's capture range (cudaProfilerStart/Stop) and "
                "needs CUDA: add --use-pytorch-profiler for a trace on this machine")
    if args.use_pytorch_profiler and trace_folder(args) is None:
        return ("--use-pytorch-profiler writes its trace into --tensorboard-dir (as Megatron-LM) or, without "
                "one, into <--save>/profile: give --tensorboard-dir DIR or --save DIR")
    return None


class StepProfiler:
    """The profiling flags' hooks in the training loop, for this rank.

    Built before the model (memory history must see its allocations); then, per iteration,
    :meth:`step_begins` at the top (``iteration``: steps done before it) and :meth:`step_ended`
    after it (``done``: steps done including it); :meth:`close` when the loop ends, however it ends.
    """

    def __init__(self, args, rank: int, world_size: int):
        self.args = args
        self.rank = rank
        chosen = rank in profiled_ranks(args.profile_ranks, world_size)
        self.profiling = bool(args.profile) and chosen
        self.memory_history = bool(args.record_memory_history) and chosen
        self.first_step: Optional[int] = None  # the log's number of this launch's first step
        self.torch_profiler = None
        self.nvtx_context = None
        self.nsys_capturing = False
        self.finished = False  # the profile window has ended (a profiler runs once)
        self.trace_path: Optional[str] = None
        if self.memory_history:
            self._start_memory_history()

    # ------------------------------------------------------------------ loop hooks
    def step_begins(self, iteration: int) -> None:
        if self.first_step is None:
            self.first_step = iteration + 1
            if self.profiling:
                self._announce(iteration)
        if not self.profiling:
            return
        if self.args.use_pytorch_profiler:
            if self.torch_profiler is None:
                if self.finished:
                    return
                self.torch_profiler = self._pytorch_profiler()
                self.torch_profiler.start()  # Megatron-LM: start() before the loop, step() at its top
            self.torch_profiler.step()
            set_trace_ranges("record_function" if self._torch_profiler_records() else None)
        elif iteration == self.args.profile_step_start:
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStart())
            self.nvtx_context = torch.autograd.profiler.emit_nvtx(record_shapes=self.args.record_shapes)
            self.nvtx_context.__enter__()
            self.nsys_capturing = True
            set_trace_ranges("nvtx")

    def step_ended(self, done: int) -> None:
        if self.memory_history and (done % self.args.log_interval == 0 or done == self.first_step):
            torch.cuda.memory._dump_snapshot(self.snapshot_path())
        if self.profiling and done == self.args.profile_step_end:
            self._stop()

    def close(self) -> None:
        """Stop what still runs (a run that ends or fails inside the window): the PyTorch
        profiler writes the steps it recorded, nsys's capture range ends."""
        try:
            self._stop()
        except Exception as error:  # never hide the error that ended the loop
            _say(f"profiling rank {self.rank}: stopping the profiler failed ({error})")
        if self.memory_history:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.memory_history = False

    # ------------------------------------------------------------------ internals
    def _announce(self, start_iteration: int) -> None:
        """Which steps (as the log numbers them) the profile will hold, and where it goes."""
        start, end = self.args.profile_step_start, self.args.profile_step_end
        if self.args.use_pytorch_profiler:  # the schedule counts this launch's steps
            first, last = start_iteration + max(start, 1), start_iteration + end - 1
            where = f"a trace in {trace_folder(self.args)}"
        else:  # global iterations, as Megatron-LM's nsys path
            first, last = start + 1, end
            where = "nsys's capture range (cudaProfilerStart/Stop)"
            if start < start_iteration:
                where += f", which this run, resumed at iteration {start_iteration}, has passed: nothing is captured"
        _say(f"profiling rank {self.rank}: iterations {first}..{last} -> {where}")

    def _stop(self) -> None:
        self.finished = True
        set_trace_ranges(None)
        if self.torch_profiler is not None:
            profiler, self.torch_profiler = self.torch_profiler, None
            profiler.stop()  # writes the trace if steps were recorded and not yet written
        if self.nsys_capturing:
            self.nsys_capturing = False
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStop())
            self.nvtx_context.__exit__(None, None, None)
            self.nvtx_context = None

    def _pytorch_profiler(self):
        start, end = self.args.profile_step_start, self.args.profile_step_end
        return torch.profiler.profile(
            schedule=torch.profiler.schedule(wait=max(start - 1, 0), warmup=1 if start > 0 else 0,
                                             active=end - start, repeat=1),
            on_trace_ready=self._write_trace,
            record_shapes=self.args.pytorch_profiler_collect_shapes,
            with_stack=self.args.pytorch_profiler_collect_callstack,
        )

    def _torch_profiler_records(self) -> bool:
        from torch.profiler import ProfilerAction

        return self.torch_profiler.current_action in (ProfilerAction.WARMUP, ProfilerAction.RECORD,
                                                      ProfilerAction.RECORD_AND_SAVE)

    def _write_trace(self, profiler) -> None:
        """tensorboard_trace_handler's file name, with the rank as the worker name."""
        folder = trace_folder(self.args)
        os.makedirs(folder, exist_ok=True)
        self.trace_path = os.path.join(folder, f"rank{self.rank}.{time.time_ns()}.pt.trace.json")
        profiler.export_chrome_trace(self.trace_path)
        _say(f"profiling rank {self.rank}: trace written to {self.trace_path} (TensorBoard's PyTorch profiler "
             "tab, or https://ui.perfetto.dev)")

    def snapshot_path(self) -> str:
        base, ext = os.path.splitext(self.args.memory_snapshot_path)
        return f"{base}_{self.rank}{ext}"

    def _start_memory_history(self) -> None:
        # Megatron-LM's settings: 100k alloc/free events, each with its Python stack.
        torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python",
                                                 max_entries=100_000)
        base, ext = os.path.splitext(self.args.memory_snapshot_path)
        oom_path = f"{base}_oom_rank-{self.rank}{ext}"

        def on_out_of_memory(device, alloc, device_alloc, device_free):
            torch.cuda.memory._dump_snapshot(oom_path)
            _say(f"out of memory on rank {self.rank}: memory snapshot written to {oom_path}")

        torch._C._cuda_attach_out_of_memory_observer(on_out_of_memory)
        _say(f"recording CUDA memory history on rank {self.rank}: snapshots to {self.snapshot_path()}")


def _say(line: str) -> None:
    """A line from this rank (the profiled rank need not be rank 0)."""
    print(line, flush=True)
