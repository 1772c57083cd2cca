"""Per-rank peak memory of a real layout, measured on CPU as if on a GPU (``plan_run.py --measure``).

One process poses as one rank of the layout on the fake GPU of :mod:`fake_gpu` (PyTorch's
PrivateUse1 device under FakeTensorMode, torch's fake process group with Megatron's groups on
it): the model, Megatron DDP and the optimizer are built by ``training/build.py`` exactly as a
GPU run builds them, and two real ``train_step`` calls run (the looped pipeline for multi-pass
modes under PP). Tensors have shapes but no data, so a 70B stage needs no more host memory than
its Python objects. ``torch.distributed._tools.mem_tracker.MemTracker`` follows every storage
the step creates and frees and gives the peak; weights, fp32 gradient buffers and optimizer
state are counted from the storages the model and optimizer hold; a ``saved_tensors_hooks``
probe gives the peak of what autograd keeps for backward (the planner's "activations").

Two steps, because Adam's state is created in the first optimizer step: the second step's
backward runs with every persistent buffer in place, as every later step of a run does.

Run a rank in a fresh process (``python tools/plan_measure.py --worker JSON``; ``plan_run.py``
does that per pipeline stage): the fake device and process group are per process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
import weakref
from contextlib import contextmanager
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

MEASURED_STEPS = 2


# ---------------------------------------------------------------------------------------------
# What to run: the training entry point's flags for a plan
# ---------------------------------------------------------------------------------------------


def pretrain_flags(run, layout, microbatches: int, architecture: str) -> List[str]:
    """``megatron_ponder.pretrain`` flags that build ``run`` in ``layout`` (bf16, local layer spec).

    ``run``: the planner's RunSpec with its vocabulary already padded for ``layout.tp`` (the model
    is built with exactly that many rows). ``microbatches``: per step and data-parallel rank.
    ``architecture``: llama, gpt2 or neox (the preset's or ``--style``).
    """
    model, method = run.model, run.method
    hi = method.jacobi_rounds[1]
    flags = [
        "--architecture", architecture,
        "--num-layers", model.num_layers, "--hidden-size", model.hidden_size,
        "--num-attention-heads", model.num_attention_heads, "--num-query-groups", model.num_query_groups,
        "--ffn-hidden-size", model.ffn_hidden_size, "--vocab-size", model.vocab_size,
        "--seq-length", run.seq_length, "--max-position-embeddings", model.max_position_embeddings,
        "--ponder-mode", method.mode, "--ponder-steps", method.ponder_steps,
        "--num-latent-thoughts", method.num_latent_thoughts,
        "--ponder-grad-steps", method.ponder_grad_steps or "all",
        "--jacobi-grad-rounds", method.jacobi_grad_rounds or "all",
        # Memory is planned for the largest J of the range: measure a step that draws it.
        "--jacobi-train-rounds", f"{hi},{hi}",
        "--bf16", "--transformer-impl", "local", "--local-attention", run.precision.local_attention,
        "--tensor-model-parallel-size", layout.tp, "--pipeline-model-parallel-size", layout.pp,
        "--context-parallel-size", layout.cp,
        "--micro-batch-size", layout.micro_batch_size,
        "--global-batch-size", layout.micro_batch_size * microbatches * layout.dp,
        "--mock-data", "--train-iters", MEASURED_STEPS, "--eval-iters", 0,
    ]
    if layout.sp:
        flags.append("--sequence-parallel")
    if layout.distributed_optimizer:
        flags.append("--use-distributed-optimizer")
    if layout.recompute == "selective":
        flags += ["--recompute-granularity", "selective"]
    elif layout.recompute == "full":  # the planner's full recompute: uniform, one layer per checkpoint
        flags += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", 1]
    return [str(flag) for flag in flags]


def rank_of_stage(layout, stage: int) -> int:
    """Global rank of (tp 0, cp 0, dp 0, pipeline stage ``stage``) in Megatron's default order
    (tp fastest, then cp, dp, pp)."""
    return stage * layout.tp * layout.cp * layout.dp


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class SavedForBackwardPeak:
    """Peak bytes of storages autograd keeps for backward (parameters excluded).

    Storages are keyed by identity (fake tensors have no data pointers) and counted once however
    many saved views share them; an entry leaves when autograd drops its last saved alias.
    """

    def __init__(self, parameters):
        import torch.utils.weak

        self._parameter_storages = torch.utils.weak.WeakIdKeyDictionary(
            {p.untyped_storage(): True for p in parameters})
        self._live = torch.utils.weak.WeakIdKeyDictionary()  # storage -> [aliases, bytes]
        self.alive = 0
        self.peak = 0

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage in self._parameter_storages or storage.nbytes() == 0:
            return tensor
        entry = self._live.get(storage)
        if entry is None:
            entry = self._live[storage] = [0, storage.nbytes()]
            self.alive += entry[1]
            self.peak = max(self.peak, self.alive)
        entry[0] += 1
        alias = tensor.detach()  # same storage; dies when autograd frees the saved variable
        weakref.finalize(alias, self._release, entry)
        return alias

    def _release(self, entry) -> None:
        entry[0] -= 1
        if entry[0] == 0:
            self.alive -= entry[1]

    @contextmanager
    def measuring(self):
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda alias: alias):
            yield self


def _step_tracker():
    """A MemTracker reduced to what is read here: every storage's birth and death, and the peak.

    MemTracker also keeps per-module statistics from module hooks, which do not fit Megatron's
    training step: a model called once per microbatch and pass is refused as "multiple
    iterative calls", and Megatron's DDP wrapper shadows ``Module.buffers()`` with a list. The
    device-wide total and its peak are kept by ``__torch_dispatch__`` for every op, whatever
    the module hooks do, so those hooks are switched off (categories are counted here from the
    storages the model and optimizer hold instead).
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    class StepMemTracker(MemTracker):
        def __init__(self):
            super().__init__()
            self.phase = "forward/backward"
            self.phase_peaks: Dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # The peak per phase (forward/backward vs optimizer step): MemTracker's own peak is
            # one number for the whole step.
            result = super().__torch_dispatch__(func, types, args, kwargs)
            total = _device_total(self.get_tracker_snapshot("current"))
            if total > self.phase_peaks.get(self.phase, 0):
                self.phase_peaks[self.phase] = total
            return result

        def _pre_fw_hook(self, module, inputs):
            pass

        def _post_fw_hook(self, module, inputs, outputs):
            pass

        def _pre_bw_hook(self, module, args):
            pass

        def _post_bw_hook(self, module, args):
            pass

    return StepMemTracker()


# What a CUDA build's dispatcher picks where the fake device takes another path. On the fake
# device SDPA falls back to its math path (fp32 copies of q, k, v and the s x s probabilities kept
# for backward) and RMSNorm to its composite form (fp32 copies of the input and of the normalised
# input kept); on an H100 torch runs flash / memory-efficient attention and the fused RMSNorm.
# ``--measure-kernels gpu`` (default) calls those kernels' own ops, whose fake-tensor rules and
# autograd formulas save what the CUDA kernels save; ``fallback`` measures the fake device as is.


def _sdpa_as_on_gpu(efficient_gqa, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """SDPA through the kernel CUDA picks: flash attention without a mask, memory-efficient
    attention (the mask as an additive bias) with one; both keep q, k, v (grouped K/V not
    expanded: both CUDA kernels take grouped heads), the output and the fp32 log-sum-exp for
    backward, no s x s matrix (the efficient kernel also keeps the bias, a view of the mask)."""
    import torch

    if attn_mask is None:
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if attn_mask.dtype == torch.bool:  # SDPA's True = may attend -> 0, else -inf, in the query's dtype
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask, float("-inf"))
    bias = attn_mask.expand(query.size(0), query.size(-3), query.size(-2), key.size(-2))
    return efficient_gqa.apply(query, key, value, bias, is_causal, scale)


def _efficient_attention_function():
    """Memory-efficient attention keeping grouped K/V as given (the CUDA kernel reads them per
    group); the fake op's backward rule wants equal head counts, so backward expands them for
    its own call (a transient) and sums the gradients back per group."""
    import torch

    class EfficientAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, query, key, value, bias, is_causal, scale):
            out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, True, 0.0, is_causal, scale=scale)
            ctx.save_for_backward(query, key, value, bias, out, lse, seed, offset)
            ctx.is_causal, ctx.scale = is_causal, scale
            return out

        @staticmethod
        def backward(ctx, grad):
            query, key, value, bias, out, lse, seed, offset = ctx.saved_tensors
            repeats = query.size(-3) // key.size(-3)
            grads = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                grad, query, key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3), bias,
                out, lse, seed, offset, 0.0, [True, True, True, False], ctx.is_causal, scale=ctx.scale)
            grad_q, grad_k, grad_v = grads[:3]
            per_group = lambda g: g.unflatten(-3, (key.size(-3), repeats)).sum(-3)  # noqa: E731
            return grad_q, per_group(grad_k), per_group(grad_v), None, None, None

    return EfficientAttention


def _fused_rms_norm_function():
    """An autograd function with the saved set of CUDA's fused RMSNorm: input, weight, fp32 rstd."""
    import torch

    class FusedRMSNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, dims, eps):
            rstd = torch.rsqrt(x.float().pow(2).mean(dims, keepdim=True) + eps)
            out = (x.float() * rstd).to(x.dtype)
            if weight is not None:
                out = out * weight
            ctx.save_for_backward(x, weight, rstd)
            ctx.dims = dims
            return out

        @staticmethod
        def backward(ctx, grad):
            x, weight, rstd = ctx.saved_tensors
            normed = x.float() * rstd
            grad_normed = grad.float() * (weight.float() if weight is not None else 1.0)
            grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(ctx.dims, keepdim=True))
            grad_weight = None
            if weight is not None:
                lead = tuple(range(grad.dim() - weight.dim()))
                grad_weight = (grad.float() * normed).sum(lead).to(weight.dtype)
            return grad_x.to(x.dtype), grad_weight, None, None

    return FusedRMSNorm


@contextmanager
def gpu_kernel_choices():
    """Inside: SDPA and RMSNorm on the fake device run as a CUDA build runs them (see above)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from fake_gpu import DEVICE_TYPE

    rms_norm = _fused_rms_norm_function()
    efficient_gqa = _efficient_attention_function()
    half = (torch.bfloat16, torch.float16)

    class GpuKernelChoices(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            first = args[0] if args else None
            on_fake_gpu = isinstance(first, torch.Tensor) and first.device.type == DEVICE_TYPE
            if on_fake_gpu and func is F.scaled_dot_product_attention and first.dtype in half:
                return _sdpa_as_on_gpu(efficient_gqa, *args, **kwargs)
            if on_fake_gpu and func in (F.rms_norm, torch.rms_norm):
                x, shape = args[0], args[1]
                weight = args[2] if len(args) > 2 else kwargs.get("weight")
                eps = args[3] if len(args) > 3 else kwargs.get("eps")
                eps = torch.finfo(x.dtype).eps if eps is None else eps
                return rms_norm.apply(x, weight, tuple(range(-len(shape), 0)), eps)
            return func(*args, **kwargs)

    with GpuKernelChoices():
        yield


def _device_total(snapshot) -> int:
    """Bytes on the fake GPU in a MemTracker snapshot (host tensors, e.g. the loader's batches, apart)."""
    from fake_gpu import DEVICE_TYPE

    return sum(entry["Total"] for device, entry in snapshot.items() if device.type == DEVICE_TYPE)


def _peak_total(tracker) -> int:
    return _device_total(tracker.get_tracker_snapshot("peak"))


def _storages_bytes(tensors, exclude=()) -> int:
    """Bytes of the distinct storages behind ``tensors`` (minus storages in ``exclude``)."""
    import torch.utils.weak

    seen = torch.utils.weak.WeakIdKeyDictionary({storage: True for storage in exclude})
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage not in seen:
            seen[storage] = True
            total += storage.nbytes()
    return total


def _torch_optimizers(optimizer) -> list:
    """The torch optimizers inside Megatron's (possibly chained) optimizer."""
    chained = getattr(optimizer, "chained_optimizers", None)
    if chained is not None:
        return [inner for part in chained for inner in _torch_optimizers(part)]
    return [optimizer.optimizer]


def state_bytes(model_chunks, optimizer) -> Dict[str, int]:
    """Weights, fp32 gradient buffers and optimizer state (master weights + Adam m, v) on this rank."""
    import torch

    params = [p for chunk in model_chunks for p in chunk.parameters()]
    grads = [p.main_grad for p in params if getattr(p, "main_grad", None) is not None]
    opt_tensors = []
    for inner in _torch_optimizers(optimizer):
        opt_tensors += [p for group in inner.param_groups for p in group["params"]]
        opt_tensors += [v for state in inner.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0]  # Adam's scalar step counters excluded
    param_storages = [p.untyped_storage() for p in params]
    grad_storages = [g.untyped_storage() for g in grads]
    return dict(
        weights=_storages_bytes(params),
        grads=_storages_bytes(grads, exclude=param_storages),
        # fp32 params are their own master copy: only storages beyond weights and grads count.
        optimizer=_storages_bytes(opt_tensors, exclude=param_storages + grad_storages),
    )


def _random_microbatches(args, count: int) -> list:
    """``count`` microbatches as the default loader makes them (CPU int64 [b, L]; the step moves them)."""
    import torch

    b, length = args.micro_batch_size, args.seq_length
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, args.tokenizer_vocab_size, (b, length))
        batches.append(dict(tokens=tokens, labels=torch.randint(0, args.tokenizer_vocab_size, (b, length)),
                            loss_mask=torch.ones(b, length), position_ids=torch.arange(length).expand(b, length),
                            attention_mask=None))
    return batches


def measure_rank(flags: List[str], world_size: int, rank: int, tokenizer_vocab_size: int, kernels: str = "gpu") -> dict:
    """Build this rank of the run ``flags`` describe on the fake GPU and measure two training steps.

    ``kernels``: ``gpu`` runs SDPA, RMSNorm and SwiGLU as a CUDA build with Triton does
    (:func:`gpu_kernel_choices`), ``fallback`` as the fake device does by itself.
    """
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_ponder.training.arguments import finalize_args, parse_args

    # Imported before the fake GPU is entered, as a run imports them before it starts: import-time
    # torch.compile/jit decorators must not see the harness's torch.cuda stand-ins.
    from megatron.core import parallel_state

    import megatron_ponder.model.architectures  # noqa: F401  (the model's modules, imported by model_config)
    from megatron_ponder.training.build import build_training_state
    from megatron_ponder.training.model_config import model_config
    from megatron_ponder.training.step import train_step

    if kernels == "gpu":
        # A GPU node has Triton, so the model asks for Megatron's torch.compile-fused SwiGLU (fc1's
        # output and fc2's input kept); the fake device has no Triton, and without this the model
        # would take the unfused activation (two more [s, b, ffn] tensors kept).
        import megatron_ponder.model.architectures as architectures

        architectures.torch_compile_available = lambda: True
    started = time.monotonic()
    args = parse_args(flags)
    args.tokenizer_vocab_size = tokenizer_vocab_size  # prepare_data's job in a real run (no data here)
    finalize_args(args, world_size)
    with fake_rank(args, world_size, rank):
        config = model_config(args)
        model, chunks, optimizer, _scheduler = build_training_state(args, config)
        tracker = _step_tracker()
        probe = SavedForBackwardPeak(p for chunk in chunks for p in chunk.parameters())
        # Built before tracking: start-up transients (init, copies into DDP's buffers) are not
        # training memory. What they left behind is registered as already present.
        tracker.track_external(*[p for chunk in chunks for p in chunk.parameters()])
        persistent = [p.main_grad for chunk in chunks for p in chunk.parameters() if hasattr(p, "main_grad")]
        for inner in _torch_optimizers(optimizer):
            persistent += [p for group in inner.param_groups for p in group["params"]]
        tracker.track_external(*persistent)

        step = optimizer.step

        def step_as_phase(*a, **k):
            tracker.phase = "optimizer step"
            try:
                return step(*a, **k)
            finally:
                tracker.phase = "forward/backward"

        optimizer.step = step_as_phase
        with tracker, (gpu_kernel_choices() if kernels == "gpu" else contextlib.nullcontext()):
            batches = _random_microbatches(args, args.num_microbatches)
            for iteration in range(MEASURED_STEPS):
                with probe.measuring():
                    train_step(chunks, optimizer, batches, args.micro_batch_size, args.seq_length, iteration)
        state = state_bytes(chunks, optimizer)
        peak = _peak_total(tracker)
        result = dict(
            rank=rank,
            stage=parallel_state.get_pipeline_model_parallel_rank(),
            pipeline_stages=parallel_state.get_pipeline_model_parallel_world_size(),
            microbatches=args.num_microbatches,
            **state,
            saved_for_backward_peak=probe.peak,
            peak=peak,
            peak_forward_backward=tracker.phase_peaks.get("forward/backward", 0),
            peak_optimizer_step=tracker.phase_peaks.get("optimizer step", 0),
            kernels=kernels,
            seconds=time.monotonic() - started,
            host_peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        del model, chunks, optimizer
    return result


@contextmanager
def fake_rank(args, world_size: int, rank: int):
    """This process as ``rank`` of ``world_size`` on the fake GPU, Megatron's groups initialised."""
    from fake_gpu import fake_gpu

    with fake_gpu(world_size=world_size, rank=rank) as gpu:
        gpu.initialize_parallel(tensor_model_parallel_size=args.tensor_model_parallel_size,
                                pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                                context_parallel_size=args.context_parallel_size, seed=args.seed)
        yield gpu


# ---------------------------------------------------------------------------------------------
# The parent: which ranks, how many microbatches, and the report beside the planner
# ---------------------------------------------------------------------------------------------


def stages_to_measure(layout) -> List[int]:
    """The stages the planner checks: the first (most chunks in flight), stage 1 (the padded
    pipeline messages) and the last (the loss head); the stages in between hold less than stage 1."""
    return sorted({0, min(1, layout.pp - 1), layout.pp - 1})


def saturating_microbatches(run, layout, stages) -> int:
    """The fewest microbatches per step whose planned activation peak equals the full step's.

    Memory does not grow with the microbatch count once the schedule's in-flight window is
    full (1 microbatch without PP; about pp, or the interleaved warm-up of the looped pipeline,
    with PP), so measuring that many instead of all of them gives the same peak in less time.
    """
    from dataclasses import replace

    from megatron_ponder.planning.memory import activation_peak

    rounds = run.method.jacobi_rounds[1]
    full = [activation_peak(run, layout, stage, rounds) for stage in stages]
    step = layout.pp if (layout.pp > 1 and run.method.mode != "none") else 1
    start = layout.pp if layout.pp > 1 else 1
    for count in range(start, layout.num_microbatches, step):
        fewer = replace(layout, num_microbatches=count)
        if all(abs(activation_peak(run, fewer, stage, rounds) - peak) <= 1e-9 * peak
               for stage, peak in zip(stages, full)):
            return count
    return layout.num_microbatches


def planned_stage(run, layout, stage: int) -> Dict[str, float]:
    """The planner's bytes for one pipeline stage (``plan_memory`` reports only the worst one)."""
    from megatron_ponder.planning.memory import (activation_peak, backward_temporaries, stage_params,
                                                 state_bytes_per_param)
    from megatron_ponder.planning.schedule import step_passes

    params = stage_params(run.model, run.method, layout, stage)
    shards = layout.dp * layout.cp if layout.distributed_optimizer else 1
    per_param = state_bytes_per_param(run.precision, shards)
    planned = {name: params * per_param[name] for name in ("weights", "grads", "optimizer")}
    rounds = run.method.jacobi_rounds[1]
    planned["activations"] = activation_peak(run, layout, stage, rounds)
    planned["temporaries"] = backward_temporaries(run, layout, step_passes(run.method, rounds))
    planned["total"] = sum(planned.values())
    return planned


def run_worker(flags: List[str], world_size: int, rank: int, tokenizer_vocab_size: int, kernels: str) -> dict:
    """Measure one rank in a fresh process (the fake device and process group are per process)."""
    import subprocess

    spec = json.dumps(dict(flags=flags, world_size=world_size, rank=rank, tokenizer_vocab_size=tokenizer_vocab_size,
                           kernels=kernels))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec],
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    raise RuntimeError(f"measuring rank {rank} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


def _gib(nbytes: float) -> str:
    """GiB, or MiB below 1 GiB (small test shapes)."""
    if abs(nbytes) < 2**30:
        return f"{nbytes / 2**20:8.1f} MiB"
    return f"{nbytes / 2**30:8.2f} GiB"


def _diff(measured: float, planned: float) -> str:
    return f"{(planned - measured) / measured:+6.1%}" if measured else ""


def describe_measurement(result: dict, planned: Dict[str, float], memory_gib: float,
                         usable_fraction: float) -> List[str]:
    """Lines comparing one measured rank with the planner (planner - measured, relative to measured)."""
    state = result["weights"] + result["grads"] + result["optimizer"]
    usable = memory_gib * usable_fraction * 2**30
    fits = "fits" if result["peak"] <= usable else "DOES NOT FIT"

    def row(name: str, measured: float, plan: float, note: str = "") -> str:
        return f"  {name:28s} {_gib(measured)} {_gib(plan)}  {_diff(measured, plan)}{note}"

    return [
        f"rank {result['rank']} (pipeline stage {result['stage']} of {result['pipeline_stages']}), "
        f"{MEASURED_STEPS} steps x {result['microbatches']} microbatches, "
        f"{result['seconds']:.0f} s, host peak {result['host_peak_mib']:.0f} MiB:",
        f"  {'':28s} {'measured':>12s} {'planner':>12s}  planner-measured",
        row("weights", result["weights"], planned["weights"]),
        row("grads (fp32 buffers)", result["grads"], planned["grads"]),
        row("optimizer (master + Adam)", result["optimizer"], planned["optimizer"]),
        row("saved for backward (peak)", result["saved_for_backward_peak"], planned["activations"]),
        row("activations + temporaries", result["peak"] - state, planned["activations"] + planned["temporaries"],
            "   (peak - weights - grads - optimizer)"),
        row("total (peak)", result["peak"], planned["total"],
            f"   -> {fits} {memory_gib:g} GiB ({usable / 2**30:.1f} GiB usable)"),
    ]


def measure_and_report(args, run, layout, architecture: str) -> int:
    """``plan_run.py --measure``: measure the pipeline stages that matter, print them beside the planner."""
    from dataclasses import replace

    from megatron_ponder.planning.layouts import USABLE_FRACTION, run_for_layout
    from megatron_ponder.planning.shapes import Precision

    if run.precision.name != "bf16":
        raise SystemExit("error: --measure runs the bf16 local layer spec (FP8 needs Transformer Engine on a GPU): "
                         "use --precision bf16")
    # The fake GPU runs Megatron's local layer spec (no Transformer Engine on CPU): plan that.
    local = run_for_layout(replace(run, precision=Precision("bf16", "local", args.local_attention)), layout, 128)
    stages = args.measure_stages or stages_to_measure(layout)
    bad = [stage for stage in stages if not 0 <= stage < layout.pp]
    if bad:
        raise SystemExit(f"error: --measure-stages {bad[0]} is not a pipeline stage of --pp {layout.pp} "
                         f"(0..{layout.pp - 1})")
    microbatches = args.measure_microbatches or saturating_microbatches(local, layout, stages)
    if layout.pp > 1 and (microbatches < layout.pp or (run.method.mode != "none" and microbatches % layout.pp)):
        raise SystemExit(f"error: --measure-microbatches {microbatches} must be >= --pp {layout.pp}"
                         + (" and a multiple of it" if run.method.mode != "none" else ""))
    flags = pretrain_flags(local, layout, microbatches, architecture)
    print(f"\nmeasuring on the fake GPU (CPU, no memory allocated): {MEASURED_STEPS} training steps of "
          f"{microbatches} microbatch(es) per rank ({layout.num_microbatches} in the real step; the planned "
          f"activation peak is the same), local layer spec, {args.local_attention} core attention", flush=True)
    print("  as: python -m megatron_ponder.pretrain " + " ".join(flags), flush=True)
    results = []
    for stage in stages:
        rank = rank_of_stage(layout, stage)
        print(f"  measuring rank {rank} of {layout.world_size} (pipeline stage {stage}) ...", flush=True)
        try:
            result = run_worker(flags, layout.world_size, rank, run.model.vocab_size, args.measure_kernels)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
        planned = planned_stage(local, layout, stage)
        print("\n".join("  " + line for line in
                        describe_measurement(result, planned, args.gpu_memory_gib, USABLE_FRACTION)), flush=True)
        results.append((result, planned))
    for line in measurement_notes(args, run, layout, results):
        print(line)
    if args.measure_json:
        with open(args.measure_json, "w") as out:
            json.dump(dict(flags=flags, layout=layout.describe(), memory_gib=args.gpu_memory_gib,
                           usable_fraction=USABLE_FRACTION,
                           ranks=[dict(measured=result, planned=planned) for result, planned in results]),
                      out, indent=1)
    return 0


def measurement_notes(args, run, layout, results) -> List[str]:
    """What the figures are: kernels on the fake device against a GPU, the optimizer step's temporaries."""
    notes = ["notes:"]
    if args.measure_kernels == "gpu":
        notes.append("  - kernels as on a CUDA build: SDPA ran as flash attention (memory-efficient attention with a "
                     "mask), RMSNorm as the fused kernel, SwiGLU as Megatron's torch.compile fusion (Triton on a "
                     "GPU): their saved tensors, not the fake device's fallbacks (--measure-kernels fallback: SDPA's "
                     "math path keeps fp32 s x s probabilities per layer and pass, RMSNorm fp32 copies, SwiGLU "
                     "unfused)")
    else:
        notes.append("  - kernels as the fake device runs them (--measure-kernels fallback): SDPA took its math path "
                     "(fp32 s x s probabilities kept per layer and pass, which flash attention on a GPU does not "
                     "keep), RMSNorm its composite form (fp32 copies), SwiGLU the unfused activation (no Triton): "
                     "an upper bound, not a GPU figure")
    if args.local_attention == "unfused":
        notes.append("  - unfused attention runs the same torch ops here as on a GPU without Megatron's fused "
                     "softmax kernels (fp32 softmax output + its bf16 cast kept); with the fused masked-softmax "
                     "kernel a GPU keeps only the bf16 probabilities")
    in_optimizer = [r for r, _ in results if r["peak_optimizer_step"] > r["peak_forward_backward"]]
    if in_optimizer:
        notes.append("  - the peak was reached in the optimizer step (torch's foreach Adam temporaries, as Megatron "
                     "runs without Apex/TE; with their fused Adam a GPU keeps less there); forward/backward alone: "
                     + ", ".join(f"rank {r['rank']} {r['peak_forward_backward'] / 2**30:.2f} GiB"
                                 for r in in_optimizer))
    if run.precision.kernels == "te":
        from megatron_ponder.planning.layouts import run_for_layout
        from megatron_ponder.planning.memory import plan_memory

        te_plan = plan_memory(run_for_layout(run, layout, 128), layout)
        notes.append(f"  - measured on Megatron's local layer spec (Transformer Engine does not run on CPU); the "
                     f"planner's te profile (the GPU default) gives {te_plan.total / 2**30:.2f} GiB on stage "
                     f"{te_plan.stage}: a model, not measured")
    notes.append("  - measured = what a GPU run of these flags allocates through PyTorch (MemTracker, every storage "
                 "alive at once at the peak); not counted: the CUDA context, NCCL buffers and allocator "
                 "fragmentation (the planner's 10% reserve)")
    return notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="measure one rank (used by plan_run.py --measure)")
    parser.add_argument("--worker", required=True, help="JSON: flags, world_size, rank, tokenizer_vocab_size")
    spec = json.loads(parser.parse_args(argv).worker)
    result = measure_rank(spec["flags"], spec["world_size"], spec["rank"], spec["tokenizer_vocab_size"],
                          spec.get("kernels", "gpu"))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
