"""At PP=2 every training step tells the model "first microbatch" (Transformer Engine re-quantises
its FP8 weight cache only then): Megatron's schedule calls ``set_is_first_microbatch`` on a chunk
when it starts its first microbatch, and the looped pipeline's chunks must pass that on to the
shared model. Counted on a probe module holding ``is_first_microbatch``, as TE's layers do."""

import pytest
import torch

from support.fake_gpu_runs import Layout, fake_gpu_run

pytestmark = pytest.mark.fake_gpu


class FirstMicrobatchProbe(torch.nn.Module):
    """Counts how often ``is_first_microbatch`` is set to True (a TE layer resets it after a forward)."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "times_set", 0)
        object.__setattr__(self, "_flag", False)

    @property
    def is_first_microbatch(self) -> bool:
        return self._flag

    @is_first_microbatch.setter
    def is_first_microbatch(self, value: bool) -> None:
        object.__setattr__(self, "_flag", value)
        if value:
            object.__setattr__(self, "times_set", self.times_set + 1)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("mode", ["none", "ponder", "latent"])
def test_every_step_tells_the_model_first_microbatch(mode, rank):
    from megatron_ponder.training.step import train_step

    with fake_gpu_run(mode, Layout("pp2", pp=2, rank=rank)) as run:
        probe = FirstMicrobatchProbe()
        run.model.add_module("fp8_cache_probe", probe)
        # Megatron's modules pass the call on only when FP8 (or kitchen) quantisation is on; FP8
        # needs TE, and use_kitchen is read only when the layer specs are built, so it opens the
        # same path here without changing the step.
        run.config.use_kitchen = True
        schedule_calls = []
        for chunk in run.chunks:  # the DDP chunk that Megatron's schedule sees (mode none)
            original = chunk.set_is_first_microbatch
            chunk.set_is_first_microbatch = lambda _original=original: (schedule_calls.append(1), _original())[1]
        stream = run.stream(run.train_set)
        per_step = []
        for iteration in range(2):
            before, calls_before = probe.times_set, len(schedule_calls)
            train_step(run.chunks, run.optimizer, stream.next_step(), run.args.micro_batch_size,
                       run.args.seq_length, iteration)
            per_step.append(probe.times_set - before)
            if mode == "none":  # Megatron's 1F1B calls the chunk itself
                assert len(schedule_calls) > calls_before
        assert all(count >= 1 for count in per_step), f"first-microbatch flags set per step: {per_step}"
