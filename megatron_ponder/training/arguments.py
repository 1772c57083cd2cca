"""Command-line arguments of the pretrain entry point, in Megatron-LM's spelling.

Model shape comes from ``--preset`` (see :mod:`megatron_ponder.training.presets`) and any of
``--num-layers/--hidden-size/...`` override it. The method's own flags are ``--ponder-*``,
``--num-latent-thoughts`` and ``--jacobi-*``. A flag that sets a PonderConfig field is spelled
as the field (``--jacobi-train-rounds`` sets ``jacobi_train_rounds``), so the config is built by
field name (:mod:`megatron_ponder.training.model_config`); older spellings still parse
(:data:`OLD_SPELLINGS`). :func:`validate_args` turns every inconsistency into a one-line
:class:`ArgumentError` that names the flag and the fix; :func:`finalize_args` also writes the
sizes that follow from the world size (:func:`derive_run_sizes`) into the arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import torch

from megatron_ponder.sequence_layout import check_sequence_layout
from megatron_ponder.training.fusions import FUSION_FLAGS
from megatron_ponder.training.numeric_flags import check_numeric_flags
from megatron_ponder.training.presets import PRESETS
from megatron_ponder.training.profiling import add_profiling_args, profiling_problem


class ArgumentError(ValueError):
    """A command-line value the run cannot start with (message names the flag and the fix)."""


SQRT_HIDDEN = "sqrt-hidden"


def _input_scale(text: str):
    """A number, or ``sqrt-hidden`` (sqrt of --hidden-size, resolved once the preset is applied)."""
    if text == SQRT_HIDDEN:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {SQRT_HIDDEN}, got {text!r}") from None


def _grad_count(text: str):
    """``all`` -> None (every pass keeps its graph), else an integer K >= 1."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: give an integer >= 1 or all")
    return value


def _jacobi_range(text: str):
    """``"3"`` -> (3, 3); ``"2,3"`` or ``"2-3"`` -> (2, 3)."""
    parts = text.replace("-", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO,HI, got {text!r}")
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected N or LO,HI, got {text!r}")
    return tuple(values)


# Old flag -> the flag that replaced it (hidden from --help, parsed to the same destination).
OLD_SPELLINGS = {
    "--jacobi-iters": "--jacobi-train-rounds",
    "--jacobi-eval-iters": "--jacobi-eval-rounds",
    "--ponder-replace": "--no-ponder-accumulate",
    "--no-fp8-mixing": "--no-ponder-fp8-mixing",
}
# Saved-argument names of checkpoints written before the renames -> (name now, value map).
_OLD_DESTS = {
    "jacobi_iters": ("jacobi_train_rounds", lambda value: value),
    "jacobi_eval_iters": ("jacobi_eval_rounds", lambda value: value),
    "ponder_replace": ("ponder_accumulate", lambda value: not value),
    "no_fp8_mixing": ("ponder_fp8_mixing", lambda value: not value),
    "fp8_format": ("fp8", lambda value: value),
}


def _old_spelling(group, flag: str, **how) -> None:
    """Parse ``flag`` (an :data:`OLD_SPELLINGS` key) as its replacement, without listing it."""
    group.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **how)


def upgrade_saved_args(saved: Dict[str, Any]) -> Dict[str, Any]:
    """Arguments saved in a checkpoint, with destinations renamed since then under today's names."""
    upgraded = {}
    for key, value in saved.items():
        name, convert = _OLD_DESTS.get(key, (key, lambda v: v))
        if name not in saved or name == key:
            upgraded[name] = convert(value)
    return upgraded


class _Parser(argparse.ArgumentParser):
    """argparse; under torchrun only rank 0 prints a usage error, and every rank exits 2 together
    (runtime/parallel_init.leave_together: none is stopped by torchrun's SIGTERM meanwhile)."""

    def error(self, message):
        from megatron_ponder.runtime.parallel_init import leave_together

        if int(os.environ.get("RANK", "0")) == 0:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        leave_together()
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="megatron_ponder.pretrain",
        description="Pretrain a GPT that ponders (PonderLM) or thinks in latent thoughts (PonderLM-2) on Megatron-Core.",
    )
    for add_flags in (_model_flags, _method_flags, _parallel_flags, _schedule_flags, _precision_flags,
                      _data_flags, _io_flags, add_robustness_args, add_profiling_args):
        add_flags(parser)
    return parser


def _model_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS), help="model shape (default: cpu-tiny)")
    model.add_argument("--architecture", choices=["llama", "gpt2", "neox"], default=None,
                       help="llama: RMSNorm/SwiGLU/RoPE/untied; gpt2: LayerNorm/GeLU/learned positions/tied; "
                            "neox: LayerNorm/GeLU/partial RoPE/parallel residual/untied (default: the preset's)")
    model.add_argument("--num-layers", type=int)
    model.add_argument("--hidden-size", type=int)
    model.add_argument("--num-attention-heads", type=int)
    model.add_argument("--num-query-groups", type=int, help="GQA groups (default: one per head)")
    model.add_argument("--ffn-hidden-size", type=int)
    model.add_argument("--seq-length", type=int, default=None, help="tokens per sample (default: the preset's)")
    model.add_argument("--max-position-embeddings", type=int, help="default: --seq-length")
    model.add_argument("--vocab-size", type=int, help="model vocabulary (default: the tokenizer's, padded)")
    model.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    model.add_argument("--init-method-std", type=float, default=0.02)
    model.add_argument("--init-style", choices=["megatron", "ponderlm"], default="megatron",
                       help="default megatron (Megatron-LM's normal init, --init-method-std). ponderlm: the papers' "
                            "init, trunc-normal std sqrt(2/(5h)) at 3 sigma, output projections scaled down by mode "
                            "(replaces --init-method-std; docs/papers.md). The main job passes ponderlm: it trained "
                            "every mode better (docs/training_dynamics.md); pass it in your own scripts too")
    # Shape details of imported models (tools/convert_checkpoint.py import prints the flags).
    model.add_argument("--norm-epsilon", type=float, default=1e-5, help="epsilon of every LayerNorm/RMSNorm")
    model.add_argument("--rotary-base", type=int, default=10000, help="RoPE theta")
    model.add_argument("--rotary-percent", type=float, default=None,
                       help="fraction of each head RoPE rotates (default: the architecture's, neox 0.25)")
    tying = model.add_mutually_exclusive_group()
    tying.add_argument("--untie-embeddings-and-output-weights", dest="tie_embeddings", action="store_false",
                       default=None, help="separate output layer (default: the architecture's)")
    tying.add_argument("--tie-embeddings-and-output-weights", dest="tie_embeddings", action="store_true",
                       help="output layer = word embedding (default: the architecture's)")
    model.add_argument("--openai-gelu", action="store_true",
                       help="tanh-approximated GeLU (GPT-2's gelu_new) instead of the exact erf GeLU")
    model.add_argument("--hidden-dropout", type=float, default=0.0)
    model.add_argument("--attention-dropout", type=float, default=0.0)


def _method_flags(parser: argparse.ArgumentParser) -> None:
    method = parser.add_argument_group("pondering / latent thoughts")
    method.add_argument("--ponder-mode", choices=["none", "ponder", "latent"], default="latent")
    method.add_argument("--ponder-steps", type=int, default=3, help="ponder: feedback passes S")
    method.add_argument("--ponder-accumulate", action=argparse.BooleanOptionalAction, default=True,
                        help="ponder: cur += p@E (default), or with --no-ponder-accumulate cur = e_0 + p@E")
    _old_spelling(method, "--ponder-replace", dest="ponder_accumulate", action="store_false")
    method.add_argument("--ponder-grad-steps", type=_grad_count, default=None, metavar="K|all",
                        help="ponder: backpropagate through the last K feedback passes only; the first S-K run "
                             "without autograd (default all, the papers)")
    method.add_argument("--ponder-topk", type=int, default=None, metavar="K",
                        help="ponder: mix only the K most probable tokens (softmax over their K logits; "
                             "default: the whole vocabulary)")
    method.add_argument("--ponder-fp8-mixing", action=argparse.BooleanOptionalAction, default=True,
                        help="ponder with --fp8-format: the dense mixing GEMM p@E in FP8 (default), or with "
                             "--no-ponder-fp8-mixing in BF16")
    _old_spelling(method, "--no-fp8-mixing", dest="ponder_fp8_mixing", action="store_false")
    method.add_argument("--num-latent-thoughts", type=int, default=1, help="latent: thoughts N per token")
    method.add_argument("--jacobi-train-rounds", type=_jacobi_range, default=(2, 3), metavar="LO,HI",
                        help="latent: Jacobi rounds J per training step, N or LO,HI drawn per step (default 2,3)")
    _old_spelling(method, "--jacobi-iters", dest="jacobi_train_rounds", type=_jacobi_range)
    method.add_argument("--jacobi-grad-rounds", type=_grad_count, default=None, metavar="K|all",
                        help="latent: backpropagate through the last K Jacobi rounds of a step only; the "
                             "initial thoughts and the first J-K rounds run without autograd (default all, "
                             "the papers)")
    method.add_argument("--jacobi-eval-rounds", type=int, default=3, help="latent: J at evaluation")
    _old_spelling(method, "--jacobi-eval-iters", dest="jacobi_eval_rounds", type=int)
    method.add_argument("--jacobi-eval-tol", type=float, default=0.0, metavar="TOL",
                        help="latent: at evaluation, stop a microbatch's Jacobi rounds once a round's residual "
                             "||z^j - z^(j-1)||^2/numel is below TOL (at most --jacobi-eval-rounds; the eval line "
                             "reports the mean rounds); default 0: always --jacobi-eval-rounds")
    method.add_argument("--jacobi-seed", type=int, default=0)
    method.add_argument("--input-embedding-scale", type=_input_scale, default=None, metavar="S",
                        help="multiplier of E(x): a number or sqrt-hidden (default: 1/init-method-std in "
                             "latent mode, else 1)")


def _parallel_flags(parser: argparse.ArgumentParser) -> None:
    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parallel.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parallel.add_argument("--context-parallel-size", type=int, default=1)
    parallel.add_argument("--sequence-parallel", action="store_true")
    parallel.add_argument("--use-distributed-optimizer", action="store_true")
    parallel.add_argument("--overlap-grad-reduce", action="store_true",
                          help="start each DDP bucket's gradient reduction during the backward, once its last "
                               "contribution of the step is in (the earliest pass of the last microbatch)")
    parallel.add_argument("--overlap-param-gather", action="store_true",
                          help="with --use-distributed-optimizer and --overlap-grad-reduce: all-gather the "
                               "updated parameters bucket by bucket during the next forward")
    parallel.add_argument("--ddp-bucket-size", type=int, default=None,
                          help="parameters per DDP bucket under --overlap-grad-reduce (default: Megatron's, "
                               "max(40M, 1M x data-parallel size))")


def _schedule_flags(parser: argparse.ArgumentParser) -> None:
    batch = parser.add_argument_group("batch and schedule")
    batch.add_argument("--micro-batch-size", type=int, default=4)
    batch.add_argument("--global-batch-size", type=int, default=None, help="default: micro x data-parallel size")
    batch.add_argument("--train-iters", type=int, default=200)
    batch.add_argument("--exit-interval", type=int, default=None,
                       help="stop (after saving, with --save) once the iteration is a multiple of this")
    batch.add_argument("--lr", type=float, default=3e-3)
    batch.add_argument("--min-lr", type=float, default=3e-4)
    batch.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine", "WSD"], default="cosine",
                       help="WSD: warm-up, stable at --lr, then the last --lr-wsd-decay-iters decay to --min-lr")
    batch.add_argument("--lr-wsd-decay-style", choices=["exponential", "linear", "cosine", "minus_sqrt"],
                       default="exponential", help="WSD: the shape of its final decay (Megatron-LM's default)")
    batch.add_argument("--lr-wsd-decay-iters", type=int, default=None,
                       help="WSD: iterations of the final decay, at the end of --lr-decay-iters")
    batch.add_argument("--lr-warmup-iters", type=int, default=None, help="default: min(20, decay iters / 5)")
    batch.add_argument("--lr-warmup-fraction", type=float, default=None,
                       help="warm-up as a fraction of --lr-decay-iters (instead of --lr-warmup-iters)")
    batch.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    batch.add_argument("--weight-decay", type=float, default=0.1)
    batch.add_argument("--adam-beta1", type=float, default=0.9)
    batch.add_argument("--adam-beta2", type=float, default=0.95)
    batch.add_argument("--adam-eps", type=float, default=1e-8)
    batch.add_argument("--clip-grad", type=float, default=1.0)
    batch.add_argument("--seed", type=int, default=1234)


def _precision_flags(parser: argparse.ArgumentParser) -> None:
    precision = parser.add_argument_group("precision and memory")
    precision.add_argument("--bf16", action="store_true")
    # Megatron-LM's spelling and destination: --fp8-format sets the config field fp8.
    precision.add_argument("--fp8-format", dest="fp8", choices=["e4m3", "hybrid"], default=None,
                           help="FP8 GEMMs through Transformer Engine (GPU, needs --bf16): e4m3 everywhere, "
                                "or hybrid (E4M3 forward, E5M2 gradients)")
    precision.add_argument("--fp8-recipe", choices=["delayed", "tensorwise", "mxfp8", "blockwise"], default="delayed",
                           help="FP8 scaling of the transformer layers: delayed (amax history), tensorwise "
                                "(current per-tensor), blockwise (Hopper+, CUDA 12.9+) or mxfp8 (Blackwell)")
    precision.add_argument("--fp8-amax-history-len", type=int, default=1024, help="delayed recipe: amax history")
    precision.add_argument("--transformer-impl", choices=["auto", "local", "transformer_engine"], default="auto",
                           help="layer implementation: auto = Transformer Engine when CUDA and TE are present, "
                                "else Megatron's local layers")
    precision.add_argument("--local-attention", choices=["sdpa", "unfused"], default="sdpa",
                           help="core attention of the local layer spec: sdpa = torch's fused "
                                "scaled_dot_product_attention (no s x s probabilities kept), unfused = "
                                "Megatron's DotProductAttention (the TE spec always uses TE's attention)")
    precision.add_argument("--use-cpu-initialization", action="store_true",
                           help="build the weights on the CPU (default: on the GPU when there is one)")
    # Megatron-LM's fusion flags: on by default where the kernel exists (training/fusions.py).
    for field, flag in FUSION_FLAGS.items():
        precision.add_argument(flag, dest=field, action="store_false",
                               help=f"turn off {field} (default: on when its kernel is present)")
    precision.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    precision.add_argument("--recompute-method", choices=["uniform", "block"], default="uniform")
    precision.add_argument("--recompute-num-layers", type=int, default=1)


def _data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data-path", nargs="+", default=None,
                      help="indexed dataset prefixes, optionally weighted: [W1] PREFIX1 [W2] PREFIX2 ...")
    data.add_argument("--valid-data-path", nargs="+", default=None, help="separate validation blend")
    data.add_argument("--split", default="969,30,1", help="train,valid,test proportions of --data-path")
    data.add_argument("--mock-data", action="store_true", help="random tokens (no files needed)")
    # Documents packed into one sample (Megatron-LM's flags; Megatron's GPTDataset applies them).
    data.add_argument("--reset-position-ids", action="store_true",
                      help="position ids restart at 0 after every end-of-document token")
    data.add_argument("--reset-attention-mask", action="store_true",
                      help="no token attends across an end-of-document token (a per-sample document "
                           "mask; in latent mode a thought sees exactly what its token sees)")
    data.add_argument("--eod-mask-loss", action="store_true",
                      help="end-of-document tokens do not count in the loss")
    data.add_argument("--default-corpus", metavar="DIR", default=None,
                      help="build and use the built-in corpus (Python standard library sources) in DIR")
    data.add_argument("--tokenizer-type", choices=["HuggingFaceTokenizer", "NullTokenizer"], default=None)
    data.add_argument("--tokenizer-model", default=None, help="tokenizer.json or a folder holding one")
    data.add_argument("--data-cache-path", default=None)
    data.add_argument("--dataloader-type", choices=["single", "dali"], default="single",
                      help="single: Megatron-LM's sequential sampler over the shuffled dataset, read in the "
                           "training process; dali: the same samples in the same order, read and batched by "
                           "an NVIDIA DALI pipeline with prefetch (needs pip install -e \".[dali]\")")
    data.add_argument("--dali-py-workers", type=int, default=0,
                      help="dali: processes that read token windows ahead of the step (0: read in the "
                           "training process; CPU-only pipelines)")


def _io_flags(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("checkpoints and logging")
    io.add_argument("--save", default=None, help="checkpoint folder")
    io.add_argument("--load", default=None, help="resume from the latest checkpoint here (if any)")
    io.add_argument("--save-interval", type=int, default=None)
    io.add_argument("--no-load-optim", action="store_true", help="load weights only (fresh optimizer)")
    io.add_argument("--eval-interval", type=int, default=50)
    io.add_argument("--eval-iters", type=int, default=4)
    io.add_argument("--log-interval", type=int, default=10)
    io.add_argument("--tensorboard-dir", default=None)
    io.add_argument("--metrics-file", default=None,
                    help="append one JSON line per step and evaluation (full-precision loss, grad norm, lr)")
    io.add_argument("--nan-policy", choices=["stop", "skip"], default="stop",
                    help="non-finite loss: stop the run, or skip that step's update")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    apply_preset(args)
    return args


# GPT-2 and GPT-NeoX attend with one K/V per head.
NO_GQA_ARCHITECTURES = ("gpt2", "neox")


def apply_preset(args: argparse.Namespace) -> None:
    """Fill every model-shape flag the user left unset from ``--preset``."""
    preset = PRESETS[args.preset]
    chosen_groups = args.num_query_groups is not None
    for field, value in preset.items():
        if getattr(args, field, None) is None:
            setattr(args, field, value)
    if args.architecture in NO_GQA_ARCHITECTURES and not chosen_groups:
        # A llama preset's grouped-query attention under --architecture gpt2/neox: those models have
        # none (their HF classes could not hold the weights), so every head keeps its own K/V.
        args.num_query_groups = None
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.input_embedding_scale == SQRT_HIDDEN:
        args.input_embedding_scale = math.sqrt(args.hidden_size)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_iters is None and args.lr_warmup_fraction is None:
        args.lr_warmup_iters = min(20, args.lr_decay_iters // 5)


class RunSizes(NamedTuple):
    """The sizes a run's flags and world size imply."""

    data_parallel_size: int
    global_batch_size: int
    """``--global-batch-size``, by default micro-batch x data-parallel size."""
    num_microbatches: int
    """Microbatches per step on each data-parallel rank."""


def derive_run_sizes(args: argparse.Namespace, world_size: int) -> RunSizes:
    """Data-parallel size, global batch and microbatches per step; ArgumentError for parallel
    sizes the world cannot hold. Reads ``args`` only."""
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    for flag, value in (("--tensor-model-parallel-size", tp), ("--pipeline-model-parallel-size", pp),
                        ("--context-parallel-size", cp)):
        if value < 1:
            raise ArgumentError(f"{flag} must be >= 1, got {value}")
    if world_size % (tp * pp * cp) != 0:
        raise ArgumentError(f"world size {world_size} is not divisible by tensor x pipeline x context parallel = "
                            f"{tp}x{pp}x{cp} = {tp * pp * cp}: change the parallel sizes or the number of processes")
    dp = world_size // (tp * pp * cp)
    global_batch = args.global_batch_size if args.global_batch_size is not None else args.micro_batch_size * dp
    return RunSizes(dp, global_batch, global_batch // (args.micro_batch_size * dp))


def finalize_args(args: argparse.Namespace, world_size: int) -> RunSizes:
    """:func:`validate_args`, then store the derived sizes in ``args`` (the global batch default,
    ``data_parallel_size``, ``num_microbatches``, the warm-up steps): the one place they are written."""
    sizes = validate_args(args, world_size)
    args.lr_warmup_iters = warmup_iters(args)
    args.global_batch_size = sizes.global_batch_size
    args.data_parallel_size = sizes.data_parallel_size
    args.num_microbatches = sizes.num_microbatches
    return sizes


def warmup_iters(args: argparse.Namespace) -> int:
    """--lr-warmup-iters, or --lr-warmup-fraction of --lr-decay-iters (an explicit count wins)."""
    if args.lr_warmup_iters is not None:
        return args.lr_warmup_iters
    return int(args.lr_warmup_fraction * args.lr_decay_iters)


def validate_args(args: argparse.Namespace, world_size: int) -> RunSizes:
    """Raise :class:`ArgumentError` (one line, names the flag) for a run that cannot work;
    returns the run's sizes. Does not change ``args``."""

    def fail(message: str):
        raise ArgumentError(message)

    check_numeric_flags(args, ArgumentError)  # before any size is derived from them
    sizes = derive_run_sizes(args, world_size)
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    dp, microbatches = sizes.data_parallel_size, sizes.num_microbatches
    heads, groups = args.num_attention_heads, args.num_query_groups or args.num_attention_heads
    if args.hidden_size % heads != 0:
        fail(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {heads}")
    if heads % groups != 0:
        fail(f"--num-attention-heads {heads} is not divisible by --num-query-groups {groups}")
    if heads % tp != 0 or groups % tp != 0:
        fail(f"--tensor-model-parallel-size {tp} must divide --num-attention-heads {heads} and "
             f"--num-query-groups {groups}")
    if args.num_layers % pp != 0:
        fail(f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size {pp}")
    if args.architecture in NO_GQA_ARCHITECTURES and groups != heads:
        fail(f"--architecture {args.architecture} has no grouped-query attention (its Hugging Face model could not "
             f"hold the weights): drop --num-query-groups {groups}, or use --architecture llama")
    if args.openai_gelu and args.architecture == "llama":
        fail("--openai-gelu replaces GeLU, but the llama architecture uses SwiGLU: drop the flag")
    if args.rotary_percent is not None and not 0 < args.rotary_percent <= 1:
        fail(f"--rotary-percent must be in (0, 1], got {args.rotary_percent}")
    if args.sequence_parallel and tp == 1:
        fail("--sequence-parallel needs --tensor-model-parallel-size > 1")
    check_sequence_layout(args.seq_length, tp, args.sequence_parallel, cp, length_name="--seq-length")
    if sizes.global_batch_size % (args.micro_batch_size * dp) != 0:
        fail(f"--global-batch-size {sizes.global_batch_size} is not a multiple of --micro-batch-size "
             f"{args.micro_batch_size} x data-parallel size {dp}")
    if pp > 1 and microbatches < pp:
        fail(f"{microbatches} microbatches per step for {pp} pipeline stages: raise "
             "--global-batch-size to at least micro-batch x data-parallel x pipeline size")
    if pp > 1 and args.ponder_mode != "none" and microbatches % pp != 0:
        # Passes run as virtual stages of Megatron's interleaved schedule, which needs this.
        fail(f"{microbatches} microbatches per step is not a multiple of {pp} pipeline stages: "
             "adjust --global-batch-size")
    if args.lr_decay_style == "WSD" and (args.lr_wsd_decay_iters is None
                                         or args.lr_wsd_decay_iters > args.lr_decay_iters - warmup_iters(args)):
        fail("--lr-decay-style WSD needs --lr-wsd-decay-iters N, at most --lr-decay-iters minus the warm-up "
             f"({args.lr_decay_iters} - {warmup_iters(args)}), got {args.lr_wsd_decay_iters}")
    if not 0 <= warmup_iters(args) < args.lr_decay_iters:
        fail(f"--lr-warmup-iters {warmup_iters(args)} must be >= 0 and below --lr-decay-iters "
             f"{args.lr_decay_iters}")
    if args.ponder_topk is not None and args.ponder_topk < 1:
        fail(f"--ponder-topk must be >= 1, got {args.ponder_topk}")
    if args.jacobi_eval_tol > 0 and args.ponder_mode != "latent":
        fail(f"--jacobi-eval-tol only applies to --ponder-mode latent (got {args.ponder_mode})")
    if args.jacobi_eval_tol > 0 and pp > 1:
        fail("--jacobi-eval-tol > 0 needs --pipeline-model-parallel-size 1 (the looped pipeline fixes the passes "
             "before its schedule): evaluate with PP 1 or pass --jacobi-eval-tol 0")
    if args.ponder_topk is not None and args.ponder_mode != "ponder":
        fail(f"--ponder-topk only applies to --ponder-mode ponder (got {args.ponder_mode})")
    if args.overlap_param_gather and not (args.overlap_grad_reduce and args.use_distributed_optimizer):
        fail("--overlap-param-gather needs --overlap-grad-reduce and --use-distributed-optimizer")
    if args.ddp_bucket_size is not None and args.ddp_bucket_size < 1:
        fail(f"--ddp-bucket-size must be >= 1, got {args.ddp_bucket_size}")
    _check_precision(args, fail)
    problem = profiling_problem(args, world_size)  # --profile, --record-memory-history
    if problem:
        fail(problem)
    lo, hi = args.jacobi_train_rounds
    if lo < 0 or lo > hi:
        fail(f"--jacobi-train-rounds {lo},{hi} is not a range LO <= HI with LO >= 0")
    sources = [bool(args.data_path), args.mock_data, bool(args.default_corpus)]
    if sum(sources) != 1:
        fail("give exactly one data source: --data-path PREFIX..., --mock-data or --default-corpus DIR")
    if args.data_path and not args.tokenizer_model and args.tokenizer_type != "NullTokenizer":
        fail("--data-path needs the tokenizer it was preprocessed with: --tokenizer-type HuggingFaceTokenizer "
             "--tokenizer-model PATH")
    documents = [flag for flag, on in (("--reset-position-ids", args.reset_position_ids),
                                       ("--reset-attention-mask", args.reset_attention_mask),
                                       ("--eod-mask-loss", args.eod_mask_loss)) if on]
    if documents and args.dataloader_type == "dali":
        fail(f"{' '.join(documents)} with --dataloader-type dali: the DALI graph builds plain positions, "
             "causal attention and no EOD loss masking; use --dataloader-type single")
    if args.dataloader_type == "dali":
        from megatron_ponder.data.dali_loader import import_dali
        from megatron_ponder.data.errors import DataError

        try:
            import_dali()
        except DataError as error:
            fail(str(error))
    if args.dali_py_workers < 0 or (args.dali_py_workers and args.dataloader_type != "dali"):
        fail(f"--dali-py-workers {args.dali_py_workers} needs --dataloader-type dali and a count >= 0")
    if args.save_interval is not None and not args.save:
        fail("--save-interval needs --save DIR")
    # Every folder the run will write, checked now rather than after the model is built.
    for flag, folder in (("--save", args.save), ("--tensorboard-dir", args.tensorboard_dir),
                         ("--data-cache-path", args.data_cache_path), ("--default-corpus", args.default_corpus),
                         ("--wandb-save-dir", getattr(args, "wandb_save_dir", None))):
        if folder:
            _check_writable(folder, flag)
    if args.metrics_file:
        if os.path.isdir(args.metrics_file):
            fail(f"--metrics-file {args.metrics_file} is a folder: name a file, e.g. {args.metrics_file}/metrics.jsonl")
        _check_writable(os.path.dirname(os.path.abspath(args.metrics_file)), "--metrics-file's folder")
    return sizes


def _check_precision(args: argparse.Namespace, fail) -> None:
    """FP8 and the Transformer Engine layers need a GPU with TE; checked without importing TE on CPU."""
    from megatron_ponder.runtime.transformer_engine import transformer_engine_unusable_reason

    wants_te = args.fp8 is not None or args.transformer_impl == "transformer_engine"
    if wants_te:
        reason = transformer_engine_unusable_reason()
        if reason is not None:
            flag = "--fp8-format" if args.fp8 is not None else "--transformer-impl transformer_engine"
            fail(f"{flag} needs Transformer Engine on a GPU: {reason}")
    if args.fp8 is not None:
        if args.transformer_impl == "local":
            fail("--fp8-format needs the Transformer Engine layers: drop --transformer-impl local")
        if not args.bf16:
            fail("--fp8-format needs --bf16 (FP8 GEMMs run inside a BF16 model)")
        # Fail here rather than deep inside TE's first GEMM.
        if torch.cuda.is_available():
            from megatron_ponder.runtime.transformer_engine import fp8_recipe_unsupported_reason

            reason = fp8_recipe_unsupported_reason(args.fp8_recipe, torch.cuda.get_device_name(),
                                                   torch.cuda.get_device_capability(), torch.version.cuda)
            if reason is not None:
                fail(reason)
    if args.fp8_amax_history_len < 1:
        fail(f"--fp8-amax-history-len must be >= 1, got {args.fp8_amax_history_len}")


def _check_writable(path: str, flag: str = "--save") -> None:
    """Create the folder (all ranks may; exist_ok) and a probe file in it."""
    probe = os.path.join(path, f".write_probe_{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise ArgumentError(f"{flag} {path} is not writable ({error.strerror}): choose a folder you can write to")


def describe(args: argparse.Namespace) -> List[str]:
    """The run's settings as 'name: value' lines, for the log header."""
    return [f"  {key}: {value}" for key, value in sorted(vars(args).items())]


def add_robustness_args(parser: argparse.ArgumentParser) -> None:
    """Megatron-LM's resume, checkpoint, exit and logging flags (docs/training.md, "Runs that
    stop and resume")."""
    resume = parser.add_argument_group("resume, preemption and checkpoint policy")
    resume.add_argument("--finetune", action="store_true",
                        help="start a new run (iteration 0, fresh optimizer) from --load's weights; "
                             "method flags may differ from the checkpoint's")
    resume.add_argument("--use-checkpoint-args", action="store_true",
                        help="take the model shape and method flags from the --load checkpoint")
    resume.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler",
                        dest="override_opt_param_scheduler", action="store_true",
                        help="on resume, use this command line's LR/WD schedule, not the checkpoint's")
    resume.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                        dest="use_checkpoint_opt_param_scheduler", action="store_true",
                        help="on resume, keep the checkpoint's LR/WD schedule whatever the flags say")
    resume.add_argument("--no-save-optim", action="store_true",
                        help="save weights, iteration and data position only (resume with --no-load-optim)")
    resume.add_argument("--ckpt-format", choices=["torch_dist"], default="torch_dist",
                        help="checkpoint format (only Megatron's torch_dist; it reshards on load)")
    resume.add_argument("--async-save", action="store_true",
                        help="write checkpoints in a background process while training goes on (Megatron-Core's "
                             "dist_checkpointing async save); the latest pointer moves once every rank has written")
    resume.add_argument("--ckpt-fully-parallel-save", action=argparse.BooleanOptionalAction, default=True,
                        help="share the checkpoint writing out over the data-parallel ranks (Megatron-Core's "
                             "FullyParallelSaveStrategyWrapper; default on, as in Megatron-LM): each DP rank writes "
                             "about 1/DP of the files' bytes; --no-ckpt-fully-parallel-save: DP rank 0 writes "
                             "every replicated tensor")
    resume.add_argument("--ckpt-fully-parallel-load", action="store_true",
                        help="share the checkpoint reading out over the data-parallel ranks, which exchange "
                             "the shards they read (Megatron-Core's FullyParallelLoadStrategyWrapper)")
    resume.add_argument("--keep-last-checkpoints", type=int, default=None, metavar="N",
                        help="after each save, delete all but the newest N iter_* folders")
    resume.add_argument("--exit-signal-handler", action="store_true",
                        help="on SIGTERM/SIGINT: finish the step, save (with --save), exit 0")
    resume.add_argument("--exit-duration-in-mins", type=float, default=None,
                        help="finish the step, save (with --save) and exit 0 after this many minutes")
    resume.add_argument("--nan-skip-limit", type=int, default=10, metavar="N",
                        help="--nan-policy skip: stop after N consecutive skipped steps")
    logging = parser.add_argument_group("throughput and wandb logging")
    logging.add_argument("--log-throughput", action="store_true",
                         help="accepted for Megatron command lines: the log always shows tokens/s and TFLOP/s")
    logging.add_argument("--grad-norm-spike-factor", type=float, default=5.0, metavar="X",
                         help="warn when a step's grad norm exceeds X times the median of the last "
                              "--grad-norm-spike-window steps (0: never)")
    logging.add_argument("--grad-norm-spike-window", type=int, default=100, metavar="N")
    logging.add_argument("--wandb-project", default=None, help="log to Weights & Biases (pip install wandb)")
    logging.add_argument("--wandb-exp-name", default=None, help="wandb run name")
    logging.add_argument("--wandb-save-dir", default=None, help="wandb's local folder (default: wandb's)")
    # Megatron-LM's TensorBoard flags (training/run_logger.py writes its scalar names).
    logging.add_argument("--tensorboard-log-interval", type=int, default=1, metavar="N",
                         help="write the per-step TensorBoard scalars every N steps")
    logging.add_argument("--log-memory-to-tensorboard", action="store_true",
                         help="write mem-* scalars: the CUDA allocator's bytes, or the peak RSS on CPU")
    logging.add_argument("--log-timers-to-tensorboard", action="store_true",
                         help="write iteration-time and throughput (TFLOP/s per device), tokens-per-second and "
                              "mfu-percent at each log line")
    logging.add_argument("--log-validation-ppl-to-tensorboard", action="store_true",
                         help="write the validation perplexity beside the validation loss")
    logging.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                         help="dense peak TFLOP/s of one device for the log's MFU (default: from the device name "
                              "and --bf16/--fp8-format for H100, H200, A100: runtime/peak_flops.py; none on CPU)")
