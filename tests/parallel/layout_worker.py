"""torchrun worker: train tiny models a few steps in one parallel layout and write what it saw.

Every mode in ``--modes`` starts from the same initial checkpoint (``--init``, saved by
``--save-init`` in a world of one), trains ``--steps`` optimizer steps on the same global
batches, and records the global mean loss, the grad norm and the Jacobi residuals rank 0
reports for every step. The test compares
these numbers across layouts.

    torchrun --nproc-per-node 2 tests/parallel/layout_worker.py --tp 2 --sp --init DIR --out F

With ``--overlap`` (DDP's overlap_grad_reduce, and overlap_param_gather under the distributed
optimizer, small buckets) it also records every bucket reduction this rank launches: the step,
the bucket, the norm of the local (not yet reduced) gradients it sends and whether it started
inside the backward. ``--record-launches`` records the same without overlap (the reductions
then all start after the backward).
"""

from __future__ import annotations

import argparse

import torch

from megatron_ponder.variants import MODES as METHOD_MODES
from megatron_ponder.variants import RECOMPUTE, variant
from support.worker import run_worker, save_initial_checkpoint, train_from_checkpoint

# Mode name -> PonderConfig fields. Latent modes draw J per step from (1, 3).
MODES = {name: variant(name, rounds=(1, 3)) for name in METHOD_MODES}
# Top-K mixing (8 of the 64 tokens); only where the test asks for it (--modes).
MODES["ponder_topk"] = variant("ponder", ponder_topk=8)
# Truncated backprop (issue 24): ponder S=2 with a gradient through the last step only; latent
# N=2 with J drawn from {2, 3} and a gradient through the last round only (J=1 would keep all).
MODES["ponder_k1"] = variant("ponder", ponder_grad_steps=1)
MODES["latent2_k1"] = variant("latent2", rounds=(2, 3), jacobi_grad_rounds=1)
DEFAULT_MODES = tuple(METHOD_MODES)
SEQ_LENGTH = 8
GLOBAL_BATCH = 8
# Adam's first steps move every weight by about lr * sign(g): with the default eps (1e-8) a weight
# whose true gradient is ~0 moves by +-lr on fp32 rounding noise, and layouts (which round
# differently) diverge for reasons unrelated to correctness. A larger eps keeps updates smooth
# in g for tiny gradients, so the comparison measures the gradients, not the rounding.
ADAM_EPS = 1e-3


def global_batch(step: int):
    """The same [GLOBAL_BATCH, L] samples on every rank and in every layout."""
    from support.tiny_models import random_batch

    tokens, labels, positions = random_batch(GLOBAL_BATCH, SEQ_LENGTH, seed=1000 + step)
    loss_mask = torch.ones_like(tokens)
    loss_mask[0, :3] = 0  # a partly masked sample: token counts differ between microbatches
    return tokens, labels, positions, loss_mask


def microbatches(step: int, dp_rank: int, dp_size: int, micro_batch_size: int):
    tokens, labels, positions, loss_mask = global_batch(step)
    per_rank = GLOBAL_BATCH // dp_size
    out = []
    for start in range(dp_rank * per_rank, (dp_rank + 1) * per_rank, micro_batch_size):
        part = slice(start, start + micro_batch_size)
        out.append(
            dict(tokens=tokens[part], labels=labels[part], position_ids=positions[part],
                 loss_mask=loss_mask[part], attention_mask=None)
        )
    return out


def build(args, mode_fields):
    from support.tiny_models import tiny_model

    return tiny_model(
        args.style,
        tied=False if args.untied else None,
        tensor_model_parallel_size=args.tp,
        pipeline_model_parallel_size=args.pp,
        pipeline_dtype=torch.float32,
        context_parallel_size=args.cp,
        sequence_parallel=args.sp,
        calculate_per_token_loss=True,
        **({} if args.layers is None else dict(num_layers=args.layers)),
        **RECOMPUTE[args.recompute],
        **mode_fields,
    )


OVERLAP_BUCKET_SIZE = 2000  # parameters: several buckets even in the tiny models


def record_launches(chunks, launches: list, step: list) -> None:
    """Log each bucket reduction DDP starts: (step, bucket, local grad norm, inside backward)."""
    for chunk in chunks:
        for index, group in enumerate(chunk.bucket_groups):
            def start(*args, _group=group, _index=index, _original=group.start_grad_sync, **kwargs):
                if not (_group.is_first_batch and _group.grad_reduce_handle is not None):  # else a no-op
                    norm = sum(float(b.grad_data.double().pow(2).sum()) for b in _group.buckets) ** 0.5
                    inside = torch._C._current_graph_task_id() != -1
                    launches.append(dict(step=step[0], bucket=_index, norm=norm, inside_backward=inside))
                return _original(*args, **kwargs)

            group.start_grad_sync = start


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--style", default="llama")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--recompute", choices=list(RECOMPUTE), default="none")
    parser.add_argument("--untied", action="store_true", help="GPT-2 style with untied embeddings")
    parser.add_argument("--layers", type=int, help="transformer layers (default: the style's tiny size)")
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--overlap", action="store_true", help="overlap grad reduce (and param gather)")
    parser.add_argument("--record-launches", action="store_true", help="record bucket reductions (implied by --overlap)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=2, help="global batch is 8 samples")
    parser.add_argument("--init", required=True, help="initial checkpoint folder")
    parser.add_argument("--save-init", action="store_true", help="only write the initial checkpoint")
    parser.add_argument("--out", help="JSON results (rank 0 writes)")
    return parser.parse_args()


def train_modes(args):
    """The initial checkpoint (``--save-init``), or every mode's losses and grad norms."""
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig

    from megatron_ponder.runtime.parallel_init import initialize_parallel

    initialize_parallel(
        tensor_model_parallel_size=args.tp,
        pipeline_model_parallel_size=args.pp,
        context_parallel_size=args.cp,
    )
    if args.save_init:
        save_initial_checkpoint(build(args, MODES["none"]), args.init)
        return None

    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    results = {}
    for mode in args.modes.split(","):
        torch.manual_seed(1234)
        optimizer_config = OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=1.0, weight_decay=0.01,
                                           adam_eps=ADAM_EPS, use_distributed_optimizer=args.distributed_optimizer)
        wrap_options = dict(overlap_grad_reduce=args.overlap,
                            overlap_param_gather=args.overlap and args.distributed_optimizer,
                            bucket_size=OVERLAP_BUCKET_SIZE if args.overlap else None)
        launches = []
        instrument = (lambda chunks, step: record_launches(chunks, launches, step)) \
            if args.overlap or args.record_launches else None
        results[mode] = train_from_checkpoint(
            build(args, MODES[mode]), args.init, optimizer_config, args.steps,
            lambda step: microbatches(step, dp_rank, dp_size, args.micro_batch_size), args.micro_batch_size,
            SEQ_LENGTH, wrap_options=wrap_options, on_wrapped=instrument)
        results[mode]["launches"] = launches
    return results


if __name__ == "__main__":
    arguments = parse_args()
    run_worker(lambda: train_modes(arguments), arguments.out)
