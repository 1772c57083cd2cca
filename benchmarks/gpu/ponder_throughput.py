"""GPU benchmark: tokens/s and MFU of modes none / ponder / latent, BF16 vs FP8, dense vs top-K mixing.

A ~1B LLaMA-style model (16 layers, hidden 2048, 16 heads / 8 KV groups, SwiGLU 5632, vocabulary
50304, sequence 2048, untied embeddings: 0.96B parameters) on the Transformer Engine layer spec,
trained with Megatron DDP + Adam on random tokens, one configuration after another:

  mode      none | ponder (S=3) | latent (N=1, J=2)
  precision bf16 | fp8 (hybrid E4M3/E5M2, --fp8-recipe; ponder: the mixing GEMM too)
  mixing    dense | top-K (ponder only, --topk)

Reported per configuration: step time, tokens/s (real tokens, not slots), TFLOP/s per GPU and
MFU = achieved FLOP/s / peak BF16 dense FLOP/s of the GPU (``--peak-tflops``, H100 SXM: 989).
FLOPs are ``megatron_ponder.training.flops.step_flops``: every pass of the method counted
(ponder: S+1 passes, logits of each and the mixing GEMMs; latent: the initial pass, J Jacobi
rounds and the final pass over 2L slots), backward = 2x forward, recompute adds a forward.
So a ponder step at the same tokens/s as vanilla does ~4x the useful work.

    python benchmarks/gpu/ponder_throughput.py                        # one H100, all configurations
    torchrun --nproc-per-node 8 benchmarks/gpu/ponder_throughput.py --tp 2 --recompute
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from megatron_ponder.variants import RECOMPUTE, variant  # noqa: E402

MODEL = dict(num_layers=16, hidden_size=2048, num_attention_heads=16, num_query_groups=8, ffn_hidden_size=5632)
VOCAB = 50304
MODES = {"none": variant("none"), "ponder": variant("ponder", ponder_steps=3),
         "latent1": variant("latent1", rounds=(2, 2))}


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
        "llama", **MODEL, bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16,
        tensor_model_parallel_size=args.tp, sequence_parallel=args.tp > 1, hidden_dropout=0.0,
        attention_dropout=0.0, calculate_per_token_loss=True, ponder_vocab_size=VOCAB, **fields,
    )
    model = build_ponder_gpt(config, "llama", VOCAB, args.seq_length, transformer_impl="transformer_engine")
    return model.cuda()


def random_microbatches(args, generator):
    out = []
    for _ in range(args.microbatches):
        ids = torch.randint(0, VOCAB, (args.micro_batch_size, args.seq_length + 1), generator=generator).cuda()
        out.append(dict(tokens=ids[:, :-1], labels=ids[:, 1:],
                        position_ids=torch.arange(args.seq_length, device="cuda").expand(args.micro_batch_size, -1),
                        loss_mask=torch.ones(args.micro_batch_size, args.seq_length, device="cuda"),
                        attention_mask=None))
    return out


def measure(args, mode, precision, mixing):
    """(seconds per step, tokens/s, TFLOP/s per GPU, peak memory GiB)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from megatron_ponder.training.step import train_step

    torch.cuda.reset_peak_memory_stats()
    model = build(args, mode, precision, mixing)
    chunks, optimizer = wrap_and_build_optimizer(
        [model], OptimizerConfig(optimizer="adam", lr=1e-4, bf16=True, clip_grad=1.0,
                                 use_distributed_optimizer=args.distributed_optimizer))
    generator = torch.Generator().manual_seed(0)
    dp = parallel_state.get_data_parallel_world_size()
    times = []
    for iteration in range(args.warmup + args.steps):
        batches = random_microbatches(args, generator)
        torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(chunks, optimizer, batches, args.micro_batch_size, args.seq_length, iteration)
        torch.cuda.synchronize()
        if iteration >= args.warmup:
            times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    global_batch = args.micro_batch_size * args.microbatches * dp
    jacobi = model.config.jacobi_train_rounds[0] if mode == "latent" else 0
    flops = step_flops(model.config, args.seq_length, global_batch, VOCAB, jacobi)
    memory = torch.cuda.max_memory_allocated() / 2**30
    del model, chunks, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return seconds, global_batch * args.seq_length / seconds, flops / seconds / dist.get_world_size() / 1e12, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="none,ponder,latent1")
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--mixing", default="dense,topk", help="ponder mode: dense and/or topk")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--fp8-recipe", default="delayed", choices=["delayed", "tensorwise", "mxfp8", "blockwise"])
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4, help="per step and data-parallel rank")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--recompute", action="store_true", help="full activation recompute (every pass)")
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak BF16 dense TFLOP/s per GPU (H100 SXM)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()

    from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason

    reason = transformer_engine_unusable_reason()
    if reason is not None:
        print(f"error: this benchmark needs a GPU with Transformer Engine: {reason}", file=sys.stderr)
        return 2
    from megatron_ponder.runtime.parallel_init import initialize_parallel, shutdown_parallel

    initialize_parallel(tensor_model_parallel_size=args.tp)
    rank0 = torch.distributed.get_rank() == 0
    lines = [
        f"GPU: {torch.cuda.get_device_name()} x {torch.distributed.get_world_size()}, TP={args.tp}, "
        f"sequence {args.seq_length}, {args.micro_batch_size} x {args.microbatches} sequences per rank and step, "
        f"recompute {'full' if args.recompute else 'off'}, FP8 recipe {args.fp8_recipe}, top-K K={args.topk}. "
        f"MFU against {args.peak_tflops:.0f} TFLOP/s (BF16 dense peak).",
        "",
        "| mode | precision | mixing | step s | tokens/s | TFLOP/s/GPU | MFU | peak mem GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, precision, mixing in configurations(args):
        try:
            seconds, tokens, tflops, memory = measure(args, mode, precision, mixing)
            row = (f"| {mode} | {precision} | {mixing} | {seconds:.3f} | {tokens:,.0f} | {tflops:.0f} | "
                   f"{100 * tflops / args.peak_tflops:.1f}% | {memory:.1f} |")
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            row = f"| {mode} | {precision} | {mixing} | out of memory (try --recompute or --tp 2) | | | | |"
        lines.append(row)
        if rank0:
            print(row, flush=True)
    if rank0:
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
