"""Plan a run before submitting it: memory per GPU, FLOPs, communication, bubble, step time.

    python tools/plan_run.py --preset llama-7b --vocab-size 32000 --mode latent --num-latent-thoughts 1 \
        --jacobi-rounds 2 3 --seq-length 2048 --global-batch-size 1024 --micro-batch-size 1 \
        --gpus 64 --tp 4 --pp 2 --recompute selective
    python tools/plan_run.py --preset pythia-2.8b --mode ponder --ponder-steps 3 --gpus 64 --search
    python tools/plan_run.py --table > table.md        # the docs/planning.md table
    python tools/plan_run.py --preset llama-7b --vocab-size 32000 --seq-length 4096 --gpus 8 --tp 8 \
        --global-batch-size 8 --mode ponder --measure  # per-rank peak memory measured on CPU (fake GPU)

The model and its assumptions: docs/planning.md; code: megatron_ponder/planning/.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _grad_count(text: str):
    """The training flags' K|all (megatron_ponder.training.arguments), parsed the same way."""
    from megatron_ponder.training.arguments import _grad_count as training_grad_count

    return training_grad_count(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model (a preset, or the shape flags)")
    model.add_argument("--preset", help="a training preset, e.g. pythia-1.4b, llama-7b, llama-70b")
    model.add_argument("--style", choices=["llama", "gpt2"], default="llama", help="architecture style without preset")
    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups", "--ffn-hidden-size"):
        model.add_argument(flag, type=int)
    model.add_argument("--vocab-size", type=int, default=50304, help="vocabulary before padding (default 50304)")
    method = parser.add_argument_group("method")
    method.add_argument("--mode", choices=["none", "ponder", "latent"], default="none")
    method.add_argument("--ponder-steps", type=int, default=3)
    method.add_argument("--num-latent-thoughts", type=int, default=1)
    method.add_argument("--jacobi-rounds", type=int, nargs=2, default=[2, 3], metavar=("LO", "HI"))
    method.add_argument("--ponder-grad-steps", type=_grad_count, default=None, metavar="K|all",
                        help="ponder: backpropagate through the last K steps only (as in training; default all)")
    method.add_argument("--jacobi-grad-rounds", type=_grad_count, default=None, metavar="K|all",
                        help="latent: backpropagate through the last K Jacobi rounds only (as in training; default all)")
    run = parser.add_argument_group("run")
    run.add_argument("--seq-length", type=int, default=2048)
    run.add_argument("--global-batch-size", type=int, default=1024)
    run.add_argument("--micro-batch-size", type=int, default=1)
    run.add_argument("--precision", choices=["bf16", "fp8"], default="bf16")
    run.add_argument("--kernels", choices=["te", "local"], default="te",
                     help="te: Transformer Engine + flash attention (GPU); local: Megatron's local spec")
    run.add_argument("--local-attention", choices=["sdpa", "unfused"], default="sdpa",
                     help="core attention of --kernels local (and of --measure): torch SDPA, or Megatron's "
                          "unfused DotProductAttention")
    run.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    layout = parser.add_argument_group("layout (DP = GPUs / (TP*PP*CP))")
    layout.add_argument("--tp", type=int, default=1)
    layout.add_argument("--pp", type=int, default=1)
    layout.add_argument("--cp", type=int, default=1)
    layout.add_argument("--no-sequence-parallel", action="store_true")
    layout.add_argument("--no-distributed-optimizer", action="store_true")
    layout.add_argument("--no-overlap-dp", action="store_true",
                        help="plan without --overlap-grad-reduce/--overlap-param-gather (DP reduction exposed)")
    cluster = parser.add_argument_group("cluster (defaults: H100 80GB SXM, assumptions in docs/planning.md)")
    cluster.add_argument("--gpus", type=int, default=8)
    cluster.add_argument("--gpus-per-node", type=int, default=8)
    cluster.add_argument("--gpu-memory-gib", type=float, default=80.0)
    cluster.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 TFLOP/s per GPU")
    cluster.add_argument("--peak-tflops-fp8", type=float, default=1979.0)
    cluster.add_argument("--intra-node-gbps", type=float, default=450.0, help="NVLink GB/s per GPU per direction")
    cluster.add_argument("--inter-node-gbps", type=float, default=50.0, help="InfiniBand GB/s per GPU")
    cluster.add_argument("--mfu", type=float, help="utilisation of peak for all executed FLOPs (default 0.40 bf16, 0.30 fp8)")
    action = parser.add_argument_group("what to do")
    action.add_argument("--search", action="store_true", help="rank the layouts that fit on --gpus")
    action.add_argument("--top", type=int, default=10)
    action.add_argument("--table", action="store_true", help="print the docs/planning.md table (markdown)")
    action.add_argument("--measure", action="store_true",
                        help="also build the layout and run two real training steps on a fake GPU on CPU (no memory "
                             "allocated; tools/fake_gpu.py), one process per rank, and print each rank's measured "
                             "peak memory beside the planner's (docs/planning.md)")
    action.add_argument("--measure-stages", type=int, nargs="+", metavar="STAGE",
                        help="pipeline stages to measure (default: first, second and last)")
    action.add_argument("--measure-kernels", choices=["gpu", "fallback"], default="gpu",
                        help="gpu: SDPA and RMSNorm run as on a CUDA build (flash / memory-efficient attention, "
                             "fused RMSNorm: their ops' saved tensors); fallback: as the fake device runs them "
                             "(SDPA's math path keeps s x s probabilities, RMSNorm fp32 copies)")
    action.add_argument("--measure-json", metavar="PATH",
                        help="also write the measured and planned bytes per rank to PATH (JSON)")
    action.add_argument("--measure-microbatches", type=int, metavar="M",
                        help="microbatches per measured step (default: the fewest with the full step's planned peak)")
    return parser


def _model(args):
    from megatron_ponder.planning.shapes import ModelShape

    if args.preset:
        shape = ModelShape.from_preset(args.preset, vocab_size=args.vocab_size, seq_length=args.seq_length)
        # Shape flags given with a preset override it (e.g. fewer layers), as in the training entry point.
        given = {f: getattr(args, f) for f in ("num_layers", "hidden_size", "num_attention_heads",
                                               "num_query_groups", "ffn_hidden_size") if getattr(args, f) is not None}
        return replace(shape, **given)
    missing = [f for f in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size") if getattr(args, f) is None]
    if missing:
        raise SystemExit(f"error: give --preset or all of {', '.join('--' + m.replace('_', '-') for m in missing)}")
    return ModelShape.from_style(
        args.style, args.vocab_size, args.seq_length, num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, num_query_groups=args.num_query_groups,
        ffn_hidden_size=args.ffn_hidden_size,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_ponder.planning.layouts import plan_layout, search_layouts
    from megatron_ponder.planning.report import describe_plan, describe_search
    from megatron_ponder.planning.shapes import Cluster, Layout, Method, Precision, RunSpec
    from megatron_ponder.planning.step_time import DEFAULT_UTILISATION
    from megatron_ponder.planning.table import planning_table

    if args.measure and (args.search or args.table):
        raise SystemExit("error: --measure measures one layout: drop --search / --table")
    if args.table:
        print(planning_table(args.seq_length, args.global_batch_size, args.precision, args.mfu))
        return 0
    for flag in ("gpus", "gpus_per_node", "tp", "pp", "cp", "micro_batch_size", "global_batch_size", "seq_length",
                 "measure_microbatches"):
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    try:
        run = RunSpec(
            _model(args),
            Method(args.mode, ponder_steps=args.ponder_steps, num_latent_thoughts=args.num_latent_thoughts,
                   jacobi_rounds=tuple(args.jacobi_rounds), ponder_grad_steps=args.ponder_grad_steps,
                   jacobi_grad_rounds=args.jacobi_grad_rounds),
            args.seq_length, args.global_batch_size, Precision(args.precision, args.kernels, args.local_attention),
        )
        cluster = Cluster(
            num_gpus=args.gpus, gpus_per_node=args.gpus_per_node, memory_gib=args.gpu_memory_gib,
            peak_tflops_bf16=args.peak_tflops, peak_tflops_fp8=args.peak_tflops_fp8,
            intra_node_gbps=args.intra_node_gbps, inter_node_gbps=args.inter_node_gbps,
        )
        utilisation = args.mfu or DEFAULT_UTILISATION[args.precision]
        if args.search:
            plans = search_layouts(run, cluster, utilisation, args.top)
            print(describe_search(plans))
            if not plans:  # a script must not read "nothing fits" as success
                raise SystemExit(f"error: no layout fits on --gpus {args.gpus} x {args.gpu_memory_gib} GiB: add GPUs, "
                                 "shorten --seq-length or lower --global-batch-size")
            return 0
        model_parallel = args.tp * args.pp * args.cp
        per_step = args.micro_batch_size * (args.gpus // max(model_parallel, 1))
        if args.gpus % model_parallel or args.global_batch_size % per_step:
            raise ValueError(
                f"--gpus {args.gpus} must be a multiple of tp*pp*cp = {model_parallel} and --global-batch-size "
                f"{args.global_batch_size} a multiple of micro batch x DP = {per_step}"
            )
        layout = Layout(
            tp=args.tp, pp=args.pp, cp=args.cp, dp=args.gpus // model_parallel,
            sequence_parallel=not args.no_sequence_parallel, recompute=args.recompute,
            distributed_optimizer=not args.no_distributed_optimizer, micro_batch_size=args.micro_batch_size,
            num_microbatches=args.global_batch_size // per_step, overlap_dp=not args.no_overlap_dp,
        )
        plan = plan_layout(run, layout, cluster, utilisation)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(describe_plan(plan, f"{utilisation:.0%} of {cluster.peak_flops(run.precision) / 1e12:.0f} TFLOP/s"),
          flush=True)
    if args.measure:
        from megatron_ponder.training.presets import PRESETS
        from plan_measure import measure_and_report

        architecture = PRESETS[args.preset]["architecture"] if args.preset else args.style
        return measure_and_report(args, run, layout, architecture)
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore")  # Megatron's import-time notes about missing TE/Apex
    sys.exit(main())
