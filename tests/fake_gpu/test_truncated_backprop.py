"""Truncated backprop (``--jacobi-grad-rounds 1``, ``--ponder-grad-steps 1``) on the fake GPU.

The leading passes run under ``torch.no_grad`` (one stage: ``PonderGPTModel.run_plan``; the
looped pipeline: each such chunk, whose backward hands the schedule zeros made on the device of
the tensor it received). Two training steps through the entry point's builders in a non-PP
layout (TP=2) and on both stages of PP=2; a device error anywhere (a zero gradient on the host,
a collective on the CPU) fails the test. Values are fake: placement and control flow only.
"""

import pytest

from support.fake_gpu_runs import LAYOUTS, fake_gpu_run

pytestmark = pytest.mark.fake_gpu

TRUNCATION = {"ponder": ["--ponder-grad-steps", "1"], "latent": ["--jacobi-grad-rounds", "1"]}
CASES = [layout for layout in LAYOUTS if layout.name in ("tp2", "pp2-first", "pp2-last")]


@pytest.mark.parametrize("layout", CASES, ids=lambda layout: layout.name)
@pytest.mark.parametrize("mode", list(TRUNCATION))
def test_truncated_training_steps(mode, layout):
    from megatron_ponder.model.passes import plan_for_config
    from megatron_ponder.training.step import train_step

    with fake_gpu_run(mode, layout, TRUNCATION[mode]) as run:
        stream = run.stream(run.train_set)
        for iteration in range(2):
            result = train_step(run.chunks, run.optimizer, stream.next_step(), run.args.micro_batch_size,
                                run.args.seq_length, iteration)
            assert not result.skipped and result.grad_norm is not None
            plan = plan_for_config(run.config, result.jacobi_rounds)
            assert not plan[0].builds_graph and plan[-1].builds_graph  # the truncation is on
            run.scheduler.step(increment=run.args.global_batch_size)
