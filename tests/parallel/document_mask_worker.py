"""torchrun worker: a packed batch of two documents against each document alone, in one layout.

    torchrun --nproc-per-node 2 tests/parallel/document_mask_worker.py --cp 2 --out F

For every mode, one model (this layout's shards, DDP-wrapped) runs three steps' forward and
backward through the training step's schedule (``training.step.forward_backward``): the packed
batch (samples A+B and B+A, with Megatron's document masks, restarted positions and EOD out of
the loss), document A alone twice, document B alone twice (one sample per microbatch, so the
looped pipeline has a microbatch per stage). It records the per-token losses the loss function
receives (context-parallel shards put back in sequence order) and each run's gradient (the mean
over its counted tokens, as the optimizer receives it). Rank 0 writes, per mode, the largest
relative difference (to max(1, |value|)) between the packed run and the documents alone, for the
per-token losses (last pipeline stage) and for the gradients (every rank's shards; the documents'
gradients weighted by their token counts).
"""

from __future__ import annotations

import argparse

import torch

from megatron_ponder.variants import MODES
from support.worker import run_worker


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--style", default="llama")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", help="JSON results (rank 0 writes)")
    return parser.parse_args()


def _in_sequence_order(loss, cp_group):
    """[1, L_local] per-token loss of this CP rank -> [L] in sequence order (every CP rank)."""
    import torch.distributed as dist

    from megatron_ponder.model.context_parallel_attention import global_slot_indices

    cp_size = dist.get_world_size(cp_group)
    if cp_size == 1:
        return loss[0]
    index = global_slot_indices(loss.size(1), dist.get_rank(cp_group), cp_size)
    gathered = [torch.empty_like(loss[0]) for _ in range(cp_size)]
    indices = [torch.empty_like(index) for _ in range(cp_size)]
    dist.all_gather(gathered, loss[0].contiguous(), group=cp_group)
    dist.all_gather(indices, index, group=cp_group)
    full = torch.empty(cp_size * loss.size(1), dtype=loss.dtype)
    full[torch.cat(indices)] = torch.cat(gathered)
    return full


def _run(chunks, microbatches, seq_length, rounds, recorded):
    """Forward and backward of ``microbatches``: ({param name: the step's gradient, the mean over
    its counted tokens, as the optimizer receives it}, counted tokens)."""
    from megatron_ponder.training.step import forward_backward

    recorded.clear()
    for chunk in chunks:
        chunk.zero_grad_buffer()
    forward_backward(chunks, microbatches, 1, seq_length, False, rounds)
    tokens = sum(float(batch["loss_mask"].sum()) for batch in microbatches)
    # finalize_model_grads has divided the (DP/CP-reduced) sums by the global token count.
    return {name: p.main_grad.detach().double() for name, p in chunks[0].module.named_parameters()}, tokens


def compare_modes(args):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig

    import megatron_ponder.training.step as step
    from megatron_ponder.runtime.parallel_init import initialize_parallel
    from megatron_ponder.training.optimizer import wrap_and_build_optimizer
    from support.document_packing import packed_and_alone
    from support.tiny_models import tiny_model

    initialize_parallel(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                        context_parallel_size=args.cp)
    cp_group = parallel_state.get_context_parallel_group()
    recorded = []
    original_loss = step.masked_token_loss

    def recording_loss(loss_mask, output):  # forward_step's loss function, looked up per call
        per_token = output[0] if isinstance(output, tuple) else output
        recorded.append(_in_sequence_order(per_token.detach().float(), cp_group))
        return original_loss(loss_mask, output)

    step.masked_token_loss = recording_loss
    packed, alone = packed_and_alone()

    def microbatches(batch, copies=1):
        rows = [{key: (None if value is None else value[i : i + 1]) for key, value in batch.items()}
                for i in range(batch["tokens"].size(0))]
        return rows * copies

    results = {}
    for name in args.modes.split(","):
        fields = MODES[name]
        torch.manual_seed(1234)
        model = tiny_model(args.style, tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                           pipeline_dtype=torch.float32, context_parallel_size=args.cp,
                           sequence_parallel=args.sp, calculate_per_token_loss=True, **fields)
        chunks, _ = wrap_and_build_optimizer([model], OptimizerConfig(optimizer="adam", lr=1e-3))
        rounds = 2 if fields["ponder_mode"] == "latent" else None
        packed_run = _run(chunks, microbatches(packed), packed["tokens"].size(1), rounds, recorded)
        packed_losses = list(recorded)
        alone_grads, alone_losses = [], []
        for batch in alone:
            alone_grads.append(_run(chunks, microbatches(batch, copies=2), batch["tokens"].size(1), rounds, recorded))
            alone_losses.append(recorded[0] if recorded else None)  # last pipeline stage only
        loss_error = torch.zeros(())
        if packed_losses:  # the last pipeline stage
            for sample, order in ((0, (0, 1)), (1, (1, 0))):
                expected = torch.cat([alone_losses[i] for i in order])
                counted = packed["loss_mask"][sample].bool()
                relative = (packed_losses[sample] - expected).abs() / expected.abs().clamp_min(1.0)
                loss_error = torch.maximum(loss_error, relative[counted].max())
        grad_error = torch.zeros(())
        (packed_grads, _), ((grads_a, tokens_a), (grads_b, tokens_b)) = packed_run, alone_grads
        for param, grad in packed_grads.items():
            # The packed step's mean gradient = the token-weighted mean of the documents' steps.
            expected = (grads_a[param] * tokens_a + grads_b[param] * tokens_b) / (tokens_a + tokens_b)
            scale = max(1.0, float(expected.abs().max()))
            grad_error = torch.maximum(grad_error, (grad - expected).abs().max() / scale)
        errors = torch.stack([loss_error, grad_error, torch.tensor(float(bool(packed_losses)))]).double()
        dist.all_reduce(errors, op=dist.ReduceOp.MAX)
        results[name] = dict(loss_error=float(errors[0]), grad_error=float(errors[1]), checked_losses=bool(errors[2]))
    return results


if __name__ == "__main__":
    arguments = parse_args()
    run_worker(lambda: compare_modes(arguments), arguments.out)
