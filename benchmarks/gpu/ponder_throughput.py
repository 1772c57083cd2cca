"""GPU benchmark: tokens/s and MFU of modes none / ponder / latent, BF16 vs FP8, dense vs top-K mixing.

A ~1B LLaMA-style model (16 layers, hidden 2048, 16 heads / 8 KV groups, SwiGLU 5632, vocabulary
50304, sequence 2048, untied embeddings: 0.96B parameters) on the Transformer Engine layer spec,
trained with Megatron DDP + Adam on random tokens, one configuration after another:

  mode      none | ponder (S=3) | latent (N=1, J=2)
  precision bf16 | fp8 (hybrid E4M3/E5M2, --fp8-recipe; ponder: the mixing GEMM too)
  mixing    dense | top-K (ponder only, --topk)

Reported per configuration: step time, tokens/s (real tokens, not slots), TFLOP/s per GPU,
MFU = achieved FLOP/s / peak BF16 dense FLOP/s of the GPU (``--peak-tflops``; by default taken from
the device name: megatron_ponder/runtime/peak_flops.py, e.g. H100 SXM and H200 989.5; anything else
unknown, so no MFU), the peak memory of the
step (``torch.cuda.max_memory_allocated``) and the planner's per-GPU estimate for the same shape,
mode and layout (``megatron_ponder.planning.memory.plan_memory``).
FLOPs are ``megatron_ponder.training.flops.step_flops``: every pass of the method counted
(ponder: S+1 passes, logits of each and the mixing GEMMs; latent: the initial pass, J Jacobi
rounds and the final pass over 2L slots), backward = 2x forward, recompute adds a forward.
So a ponder step at the same tokens/s as vanilla does ~4x the useful work.

    python benchmarks/gpu/ponder_throughput.py                        # one H100, all configurations
    torchrun --nproc-per-node 8 benchmarks/gpu/ponder_throughput.py --tp 2 --recompute
    python benchmarks/gpu/ponder_throughput.py --precisions bf16 --transformer-impl local --json out.json

``--transformer-impl`` (default ``transformer_engine``) picks the layer spec; ``auto`` takes TE when
it imports and Megatron's local layers otherwise (FP8 needs TE). ``--device cpu`` runs the same
code on CPU/gloo at a shape given by the shape flags, to test the plumbing (``tools/gpu_check.py
--cpu-smoke``): its peak memory is a count of live tensor bytes, not CUDA's allocator figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from megatron_ponder.variants import RECOMPUTE, variant  # noqa: E402

MODEL = dict(num_layers=16, hidden_size=2048, num_attention_heads=16, num_query_groups=8, ffn_hidden_size=5632)
VOCAB = 50304
MODES = {"none": variant("none"), "ponder": variant("ponder", ponder_steps=3),
         "latent1": variant("latent1", rounds=(2, 2))}
def detect_peak_tflops(device: str):
    """(peak dense BF16 TFLOP/s or None, where the number comes from): the training log's table
    (megatron_ponder/runtime/peak_flops.py), by torch.cuda.get_device_name()."""
    from megatron_ponder.runtime.peak_flops import peak_tflops_for_run

    return peak_tflops_for_run(None, torch.cuda.get_device_name() if device == "cuda" else None, "bf16")


def shape(args) -> dict:
    return dict(num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
                num_query_groups=args.num_query_groups, ffn_hidden_size=args.ffn_hidden_size)


def configurations(args):
    for mode in args.modes.split(","):
        for precision in args.precisions.split(","):
            for mixing in (args.mixing.split(",") if mode == "ponder" else ["-"]):
                yield mode, precision, mixing


def build(args, mode: str, precision: str, mixing: str):
    from megatron_ponder.model.architectures import build_ponder_gpt, make_ponder_config

    fields = dict(MODES[mode])
    if mixing == "topk":
        fields["ponder_topk"] = args.topk
    if precision == "fp8":
        fields.update(fp8="hybrid", fp8_recipe=args.fp8_recipe, fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
    if args.recompute:
        fields.update(RECOMPUTE["full"])
    config = make_ponder_config(
        "llama", **shape(args), bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16,
        tensor_model_parallel_size=args.tp, sequence_parallel=args.tp > 1, hidden_dropout=0.0,
        attention_dropout=0.0, calculate_per_token_loss=True, ponder_vocab_size=args.vocab_size, **fields,
    )
    model = build_ponder_gpt(config, "llama", args.vocab_size, args.seq_length, transformer_impl=args.transformer_impl)
    return model.cuda() if args.device == "cuda" else model


def random_microbatches(args, generator):
    out = []
    device = args.device
    for _ in range(args.microbatches):
        size = (args.micro_batch_size, args.seq_length + 1)
        ids = torch.randint(0, args.vocab_size, size, generator=generator).to(device)
        out.append(dict(tokens=ids[:, :-1], labels=ids[:, 1:],
                        position_ids=torch.arange(args.seq_length, device=device).expand(args.micro_batch_size, -1),
                        loss_mask=torch.ones(args.micro_batch_size, args.seq_length, device=device),
                        attention_mask=None))
    return out


def planned_memory_gib(args, mode: str, dp: int) -> float:
    """The planner's per-GPU total (weights, fp32 grads, Adam state, activation peak) for this
    configuration: the figure tools/plan_run.py prints for the same shape and layout."""
    from megatron_ponder.planning.memory import GIB, plan_memory
    from megatron_ponder.planning.shapes import Layout, Method, ModelShape, Precision, RunSpec

    fields = MODES[mode]
    method = Method(fields["ponder_mode"], ponder_steps=fields.get("ponder_steps", 3),
                    num_latent_thoughts=fields.get("num_latent_thoughts", 1),
                    jacobi_rounds=tuple(fields.get("jacobi_train_rounds", (2, 3))))
    model = ModelShape.from_style("llama", args.vocab_size, args.seq_length, **shape(args))
    kernels = "te" if args.transformer_impl == "transformer_engine" else "local"
    run = RunSpec(model, method, args.seq_length, args.micro_batch_size * args.microbatches * dp,
                  Precision("bf16", kernels))
    layout = Layout(tp=args.tp, dp=dp, sequence_parallel=args.tp > 1, recompute="full" if args.recompute else "none",
                    distributed_optimizer=args.distributed_optimizer, micro_batch_size=args.micro_batch_size,
                    num_microbatches=args.microbatches)
    return plan_memory(run, layout).total / GIB


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages, counted at every op under this mode, and their peak.

    The CPU stand-in for CUDA's allocator statistics: each distinct storage an op returns is
    counted once until it is freed (a weak reference to it). Entered before the model is built,
    so weights, DDP buffers and optimizer state are counted. Torch's MemTracker would do the same
    but walks ``module.buffers()``, which Megatron's DDP shadows with a list attribute."""

    def __init__(self):
        super().__init__()
        self.live = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key):
        self.current -= self.live.pop(key, (0, None))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.live:
                    self.live[key] = (size, weakref.ref(storage, lambda _, key=key: self._freed(key)))
                    self.current += size
                    self.peak = max(self.peak, self.current)
        return out


class _PeakMemory:
    """Peak bytes allocated over a measurement: CUDA's allocator statistics on a GPU,
    :class:`_LiveTensorBytes` on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.counter = None if device == "cuda" else _LiveTensorBytes()

    def __enter__(self):
        if self.counter is None:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        if self.counter is not None:
            self.counter.__exit__(*exc)
        return False

    def gib(self) -> float:
        peak = torch.cuda.max_memory_allocated() if self.counter is None else self.counter.peak
        return peak / 2**30


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args, mode, precision, mixing):
    """(seconds per step, tokens/s, TFLOP/s per GPU, peak memory GiB, final loss)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    with _PeakMemory(args.device) as peak:
        model = build(args, mode, precision, mixing)
        chunks, optimizer = wrap_and_build_optimizer(
            [model], OptimizerConfig(optimizer="adam", lr=1e-4, bf16=True, clip_grad=1.0,
                                     use_distributed_optimizer=args.distributed_optimizer))
        generator = torch.Generator().manual_seed(0)
        dp = parallel_state.get_data_parallel_world_size()
        times = []
        for iteration in range(args.warmup + args.steps):
            batches = random_microbatches(args, generator)
            _synchronize(args.device)
            started = time.perf_counter()
            result = train_step(chunks, optimizer, batches, args.micro_batch_size, args.seq_length, iteration)
            _synchronize(args.device)
            if iteration >= args.warmup:
                times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    global_batch = args.micro_batch_size * args.microbatches * dp
    # The config's mode, not the table's key ("latent1"): comparing the key with "latent" counted J=0.
    jacobi = model.config.jacobi_train_rounds[0] if model.config.ponder_mode == "latent" else 0
    flops = step_flops(model.config, args.seq_length, global_batch, args.vocab_size, jacobi)
    memory = peak.gib()
    del model, chunks, optimizer
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    tflops = flops / seconds / dist.get_world_size() / 1e12
    return seconds, global_batch * args.seq_length / seconds, tflops, memory, float(result.loss)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="none,ponder,latent1", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--mixing", default="dense,topk", help="ponder mode: dense and/or topk")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--fp8-recipe", default="delayed", choices=["delayed", "tensorwise", "mxfp8", "blockwise"])
    parser.add_argument("--transformer-impl", default="transformer_engine",
                        choices=["auto", "local", "transformer_engine"],
                        help="layer spec; auto: Transformer Engine when it imports, else Megatron's local layers")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: the same code on CPU/gloo, for a plumbing check at a tiny shape")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4, help="per step and data-parallel rank")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--recompute", action="store_true", help="full activation recompute (every pass)")
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak BF16 dense TFLOP/s per GPU (default: from the device name, H100 SXM / H200: 989.5)")
    model = parser.add_argument_group("model shape (default: the 0.96B LLaMA-style model)")
    for name, value in MODEL.items():
        model.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    model.add_argument("--vocab-size", type=int, default=VOCAB)
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--json", default=None, help="also write every configuration's figures here (JSON)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    return args


def _refusal(args):
    """Why this benchmark cannot run as asked (one line), or None; resolves --transformer-impl auto."""
    from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason

    if args.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device: run on a GPU, or pass --device cpu for the plumbing check"
    te_reason = transformer_engine_unusable_reason() if args.device == "cuda" else "Transformer Engine is GPU-only"
    if args.transformer_impl == "auto":
        args.transformer_impl = "transformer_engine" if te_reason is None else "local"
    if args.transformer_impl == "transformer_engine" and te_reason is not None:
        return f"--transformer-impl transformer_engine needs a GPU with Transformer Engine: {te_reason}"
    if "fp8" in args.precisions.split(",") and args.transformer_impl != "transformer_engine":
        return "fp8 needs the Transformer Engine layers: pass --precisions bf16, or install TE (docs/gpu.md)"
    if "fp8" in args.precisions.split(","):
        # The training entry point's check: e.g. mxfp8 is Blackwell-only, blockwise needs CUDA 12.9.
        from megatron_ponder.runtime.transformer_engine import fp8_recipe_unsupported_reason

        return fp8_recipe_unsupported_reason(args.fp8_recipe, torch.cuda.get_device_name(),
                                             torch.cuda.get_device_capability(), torch.version.cuda)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = _refusal(args)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    peak_tflops, peak_source = ((args.peak_tflops, f"--peak-tflops {args.peak_tflops:g}") if args.peak_tflops
                                else detect_peak_tflops(args.device))
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel

    initialize_parallel(tensor_model_parallel_size=args.tp)
    world = torch.distributed.get_world_size()
    dp = world // args.tp
    rank0 = torch.distributed.get_rank() == 0
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    lines = [
        f"{device_name} x {world} ({torch.distributed.get_backend()}), {args.transformer_impl} layers, TP={args.tp}, "
        f"sequence {args.seq_length}, {args.micro_batch_size} x {args.microbatches} sequences per rank and step, "
        f"recompute {'full' if args.recompute else 'off'}, FP8 recipe {args.fp8_recipe}, top-K K={args.topk}. "
        f"MFU against {peak_source}. Planned: the planner's per-GPU total for this shape and layout.",
        "",
        "| mode | precision | mixing | step s | tokens/s | TFLOP/s/GPU | MFU | peak mem GiB | planned GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for mode, precision, mixing in configurations(args):
        record = dict(mode=mode, precision=precision, mixing=mixing, transformer_impl=args.transformer_impl)
        try:
            seconds, tokens, tflops, memory, loss = measure(args, mode, precision, mixing)
            mfu = tflops / peak_tflops if peak_tflops else None
            planned = planned_memory_gib(args, mode, dp) if precision == "bf16" and mixing != "topk" else None
            record.update(step_seconds=seconds, tokens_per_second=tokens, tflops_per_gpu=tflops, mfu=mfu,
                          peak_memory_gib=memory, planned_memory_gib=planned, final_loss=loss)
            row = (f"| {mode} | {precision} | {mixing} | {seconds:.3f} | {tokens:,.0f} | {tflops:.3g} | "
                   f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {memory:.3g} | "
                   f"{'-' if planned is None else f'{planned:.3g}'} |")
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            record.update(error="out of memory")
            row = f"| {mode} | {precision} | {mixing} | out of memory (try --recompute or --tp 2) | | | | | |"
        records.append(record)
        lines.append(row)
        if rank0:
            print(row, flush=True)
    if rank0:
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        if args.json:
            summary = dict(device=device_name, world_size=world, backend=torch.distributed.get_backend(),
                           peak_tflops=peak_tflops, peak_source=peak_source, shape=shape(args),
                           peak_memory_source=("torch.cuda.max_memory_allocated" if args.device == "cuda"
                                               else "live tensor bytes counted per op (CPU)"),
                           vocab_size=args.vocab_size, seq_length=args.seq_length,
                           micro_batch_size=args.micro_batch_size, microbatches=args.microbatches, tp=args.tp,
                           steps=args.steps, warmup=args.warmup, configurations=records)
            Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
