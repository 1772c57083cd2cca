"""The planner knows truncated backprop (issue 24, item 4): a leading pass without a graph keeps
no activations and has no backward (memory, FLOPs, communication, the DP overlap's hiding pass),
measured against the saved-tensor probe as tests/unit/test_planner_memory.py does."""

from dataclasses import replace

import pytest

from megatron_ponder.planning.communication import step_traffic
from megatron_ponder.planning.memory import plan_memory
from megatron_ponder.planning.shapes import Layout, Method
from megatron_ponder.planning.step_time import executed_flops
from megatron_ponder.variants import RECOMPUTE
from support.planning_shapes import planner_method, tiny_run
from support.saved_tensor_probe import SavedTensorPeak
from support.tiny_models import random_batch, tiny_model

BATCH, LENGTH = 2, 8
TRUNCATED = {
    "ponder": dict(ponder_mode="ponder", ponder_steps=3, ponder_grad_steps=1),
    "latent": dict(ponder_mode="latent", num_latent_thoughts=2, jacobi_train_rounds=(3, 3), jacobi_grad_rounds=1),
}


def _run(fields):
    base = tiny_run("llama", "none", LENGTH, BATCH)
    return replace(base, method=planner_method(fields))


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("mode", list(TRUNCATED))
def test_planned_activations_match_saved_tensors_with_truncation(megatron_world_of_one, mode, recompute):
    fields = TRUNCATED[mode]
    model = tiny_model("llama", **fields, **RECOMPUTE[recompute])
    model.train()
    tokens, labels, positions = random_batch(BATCH, LENGTH)
    probe = SavedTensorPeak(model.parameters())
    with probe.measuring():
        model(tokens, positions, None, labels=labels, num_jacobi_rounds=3).sum().backward()
    plan = plan_memory(_run(fields), Layout(recompute=recompute, micro_batch_size=BATCH))
    assert plan.activations == pytest.approx(probe.peak, rel=0.10)
    leading = 2 if mode == "ponder" else 4  # ponder S=3 K=1: 2 passes; latent N=2 J=3 K=1: 2 + 2
    assert plan.activations_per_pass[:leading] == [0.0] * leading
    everything = {k: v for k, v in fields.items() if not k.endswith(("grad_steps", "grad_rounds"))}
    assert plan.activations < plan_memory(_run(everything), Layout(recompute=recompute,
                                                                   micro_batch_size=BATCH)).activations


def test_passes_without_graph_have_no_backward_in_flops_and_traffic():
    truncated, everything = (Method("latent", num_latent_thoughts=1, jacobi_rounds=(3, 3), jacobi_grad_rounds=k)
                             for k in (1, None))
    runs = [replace(tiny_run("llama", "none", LENGTH, BATCH), method=m) for m in (truncated, everything)]
    # Layers: initial pass at L, rounds 1-2 at 2L without a graph (1x), round 3 and final at 2L (3x).
    flops = [executed_flops(run, "none", 3) for run in runs]
    assert flops[0] < flops[1]
    layout = Layout(tp=2, sequence_parallel=True, cp=2)
    tp = [step_traffic(run, layout, 0, 3).payload["tp"]["all_gather"] for run in runs]
    cp = [step_traffic(run, layout, 0, 3).payload["cp"] for run in runs]
    assert tp[0] < tp[1]
    assert sum(cp[0].values()) < sum(cp[1].values())
    # K >= J plans exactly as all.
    at_j = replace(runs[1], method=replace(everything, jacobi_grad_rounds=3))
    assert executed_flops(at_j, "full", 3) == executed_flops(runs[1], "full", 3)
    assert plan_memory(at_j, Layout()).activations == plan_memory(runs[1], Layout()).activations


def test_method_describes_and_checks_k():
    assert Method("ponder", ponder_grad_steps=1).describe() == "ponder S=3 grad K=1"
    assert Method("latent", jacobi_grad_rounds=2).describe() == "latent N=1 J={2..3} grad K=2"
    with pytest.raises(ValueError, match="jacobi_grad_rounds must be >= 1"):
        Method("latent", jacobi_grad_rounds=0)


def test_plan_run_takes_the_training_flags(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("plan_run", Path(__file__).parents[2] / "tools" / "plan_run.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--preset", "pythia-1.4b", "--mode", "latent", "--gpus", "8", "--global-batch-size", "64", "--tp", "2"]
    assert cli.main(args + ["--jacobi-grad-rounds", "1"]) == 0
    assert "latent N=1 J={2..3} grad K=1" in capsys.readouterr().out
    assert cli.main(args + ["--jacobi-grad-rounds", "all"]) == 0
    assert "grad K" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(args + ["--jacobi-grad-rounds", "0"])
    assert "'0' is not a count: give an integer >= 1 or all" in capsys.readouterr().err
