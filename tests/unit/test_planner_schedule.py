"""The planner's pipeline replay is Megatron's schedule; bubble, FLOPs, traffic and the CLI."""

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches, get_schedule_table

from megatron_ponder.planning.communication import step_traffic
from megatron_ponder.planning.layouts import TIE_TOLERANCE, plan_layout, search_layouts
from megatron_ponder.planning.memory import plan_memory
from megatron_ponder.planning.schedule import (
    bubble_fraction,
    max_in_flight_chunks,
    schedule_order,
    step_passes,
)
from megatron_ponder.planning.shapes import Layout, Method, ModelShape, Precision, RunSpec, h100_cluster
from megatron_ponder.planning.step_time import executed_flops, link_bandwidth, predict_step_time

REPO = Path(__file__).resolve().parents[2]


def _communicator(pp, rank, chunks):
    group = SimpleNamespace(size=lambda: pp, rank=lambda: rank)
    return SimpleNamespace(pp_group=group, virtual_pipeline_model_parallel_size=chunks)


@pytest.mark.parametrize("pp,microbatches,chunks", [(2, 2, 4), (2, 4, 5), (4, 8, 4), (4, 12, 3), (3, 9, 6)])
def test_schedule_order_is_megatrons_interleaved_schedule(pp, microbatches, chunks):
    table = get_schedule_table(microbatches, chunks, pp)
    for rank in range(pp):
        order = schedule_order(pp, rank, microbatches, chunks)
        forwards = [(mb, c) for kind, mb, c in order if kind == "F"]
        backwards = [(mb, c) for kind, mb, c in order if kind == "B"]
        assert forwards == list(table)
        assert backwards == [(mb, chunks - 1 - c) for mb, c in table]
        _, _, warmup, _ = get_pp_rank_microbatches(
            microbatches, chunks, pp, p2p_communicator=_communicator(pp, rank, chunks)
        )
        steady = warmup < microbatches * chunks  # else every forward runs before any backward
        head = warmup + 1 if steady else warmup
        assert [kind for kind, _, _ in order[:head]] == ["F"] * head
        assert order[head][0] == "B"
        assert max_in_flight_chunks(pp, rank, microbatches, chunks) == min(warmup + 1, microbatches * chunks)


def test_bubble_and_passes_follow_docs_pipeline():
    assert bubble_fraction(4, 8, 4) == pytest.approx(3 / 35)
    assert bubble_fraction(4, 8, 1) == pytest.approx(3 / 11)
    assert len(step_passes(Method("latent", num_latent_thoughts=1), 2)) == 4
    assert len(step_passes(Method("ponder", ponder_steps=3), 0)) == 4


SHAPE = ModelShape.from_preset("pythia-1.4b", vocab_size=50304)


def test_flops_count_every_pass_and_recompute():
    def flops(method, recompute="none", rounds=0):
        return executed_flops(RunSpec(SHAPE, method, 2048, 8), recompute, rounds)

    vanilla = flops(Method("none"))
    assert 3.9 * vanilla < flops(Method("ponder", ponder_steps=3)) < 4.5 * vanilla
    latent = flops(Method("latent", num_latent_thoughts=1), rounds=2)
    # 1 pass at L + 3 at 2L, one output layer: (3 + 2J) vanilla passes plus the longer attention
    assert 7 * vanilla < latent < 8 * vanilla
    assert flops(Method("none"), "full") == pytest.approx(vanilla * 4 / 3, rel=0.05)
    assert vanilla < flops(Method("none"), "selective") < flops(Method("none"), "full")


def test_pipeline_traffic_counts_every_pass_around_the_ring():
    run = RunSpec(SHAPE, Method("latent", num_latent_thoughts=1), 2048, 32, Precision("bf16"))
    layout = Layout(tp=1, pp=4, micro_batch_size=1, num_microbatches=8)
    message = 2 * 2048 * 2048 * 2  # T=2 blocks of L slots x h x bf16
    passes = 5  # J = 3
    sends = [step_traffic(run, layout, stage, 3).payload["pp"]["send"] for stage in range(4)]
    # Every microbatch crosses P*p - 1 boundaries forward and as many backward (docs/pipeline.md).
    assert sum(sends) == 2 * (passes * 4 - 1) * 8 * message


def test_pipeline_runs_at_the_pace_of_its_last_stage():
    # The last stage also runs the output layer and p @ E of every ponder pass: the step is timed
    # by it, not by the mean FLOPs per GPU.
    run = RunSpec(ModelShape.from_preset("pythia-1.4b"), Method("ponder", ponder_steps=3), 2048, 64)
    layout = Layout(pp=8, dp=1, num_microbatches=64)
    time = predict_step_time(run, layout, h100_cluster(8))
    mean = executed_flops(run, "none", 0) / 8 / (989e12 * 0.40)
    head_only = executed_flops(RunSpec(replace(run.model, num_layers=0), run.method, 2048, 64), "none", 0)
    assert time.compute_s == pytest.approx(mean + head_only * 7 / 8 / (989e12 * 0.40))
    assert time.step_s > time.compute_s / (1 - time.bubble)


def test_groups_across_nodes_use_one_nic_per_rank_in_the_node():
    cluster = h100_cluster(64)
    # DP over 64 ranks, 8 per node: 8 NICs, capped by NVLink; TP8 leaves one DP rank per node.
    assert link_bandwidth("dp", Layout(dp=64), cluster) == pytest.approx(min(450, 8 * 50) * 1e9)
    assert link_bandwidth("dp", Layout(tp=8, dp=8), cluster) == pytest.approx(50e9)
    assert link_bandwidth("dp", Layout(tp=2, dp=32), cluster) == pytest.approx(4 * 50e9)
    assert link_bandwidth("dp", Layout(dp=8, pp=8), cluster) == pytest.approx(450e9)  # inside a node
    assert link_bandwidth("pp", Layout(dp=8, pp=8), cluster) == pytest.approx(50e9)  # one NIC per message


def test_selective_recompute_repeats_the_context_parallel_exchange():
    run = RunSpec(SHAPE, Method("ponder", ponder_steps=2), 2048, 8, Precision("bf16", "local"))
    gathered = {rc: step_traffic(run, Layout(cp=2, recompute=rc, num_microbatches=8), 0, 0).payload["cp"]["all_gather"]
                for rc in ("none", "selective", "full")}
    assert gathered["selective"] == gathered["full"] == 2 * gathered["none"]


def test_distributed_optimizer_and_recompute_save_memory():
    run = RunSpec(SHAPE, Method("ponder", ponder_steps=3), 2048, 64, Precision("bf16"))
    plain = plan_memory(run, Layout(dp=8, distributed_optimizer=False))
    sharded = plan_memory(run, Layout(dp=8))
    assert sharded.optimizer == pytest.approx(plain.optimizer / 8)
    assert sharded.optimizer_without_distributed == plain.optimizer
    full = plan_memory(run, Layout(dp=8, recompute="full"))
    assert full.activations < plan_memory(run, Layout(dp=8, recompute="selective")).activations <= sharded.activations


def test_search_returns_fitting_layouts_fastest_first():
    run = RunSpec(ModelShape.from_preset("llama-7b", vocab_size=32000), Method("latent"), 2048, 256)
    plans = search_layouts(run, h100_cluster(64), top=40)
    assert plans and all(plan.fits for plan in plans)
    speeds = [plan.time.tokens_per_s for plan in plans]
    fastest = max(speeds)
    assert speeds[0] >= fastest / TIE_TOLERANCE
    tied = [speed >= fastest / TIE_TOLERANCE for speed in speeds]
    # One tie group first, then strictly by speed.
    assert tied == sorted(tied, reverse=True) and not all(tied)
    rest = speeds[tied.count(True):]
    assert rest == sorted(rest, reverse=True)
    group = [plan.layout for plan in plans[: tied.count(True)]]
    parallelism = [layout.tp * layout.pp * layout.cp for layout in group]
    assert parallelism == sorted(parallelism)  # ties go to the least model parallelism
    # 7B latent thoughts without any model parallelism does not fit in 80 GB.
    alone = plan_layout(run, Layout(dp=64, micro_batch_size=4, num_microbatches=1), h100_cluster(64))
    assert not alone.fits


def _plan_run_cli():
    spec = importlib.util.spec_from_file_location("plan_run", REPO / "tools" / "plan_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reports_a_plan_and_rejects_bad_layouts(capsys):
    cli = _plan_run_cli()
    args = ["--preset", "pythia-1.4b", "--mode", "ponder", "--gpus", "8", "--global-batch-size", "64",
            "--recompute", "selective"]
    assert cli.main(args + ["--tp", "2"]) == 0
    out = capsys.readouterr().out
    assert "activations peak" in out and "tokens/s" in out and "fits" in out
    with pytest.raises(SystemExit, match="multiple of tp\\*pp\\*cp"):
        cli.main(args + ["--tp", "3"])
