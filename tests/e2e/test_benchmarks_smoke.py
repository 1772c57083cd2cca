"""The benchmark scripts run end to end on a tiny model and print well-formed tables."""

import subprocess
import sys
from pathlib import Path

import pytest
from support.torchrun import child_env

REPO = Path(__file__).resolve().parents[2]


def table(report: str, header_start: str):
    """Rows of the markdown table whose header line starts with ``header_start``, as lists of cells."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    assert set(lines[start + 1].replace("|", "")) <= {"-", ":"}  # a separator row (alignment colons allowed)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


@pytest.mark.slow
def test_mode_cost_benchmark_tiny(tmp_path):
    output = tmp_path / "mode_cost.md"
    env = child_env()  # one thread; no MASTER_PORT of this process's own world of one
    printed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mode_cost.py"), "--tiny", "--repeats", "1",
         "--modes", "none,ponder S=2,latent N=1 J=1", "--recomputes", "none,full", "--output", str(output)],
        env=env, cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    report = output.read_text()
    assert report.strip() in printed
    times = table(report, "| mode | recompute | GFLOP/step")
    assert [(r["mode"], r["recompute"]) for r in times] == [
        ("none", "none"), ("ponder S=2", "none"), ("latent N=1 J=1", "none"), ("none", "full")]
    flop_ratio = {(r["mode"], r["recompute"]): float(r["FLOP model x"]) for r in times}
    assert flop_ratio[("none", "none")] == 1.0
    # the FLOP model counts every pass: S=2 pays 3 passes, latent N=1 J=1 one L pass + two 2L passes
    assert 3.0 < flop_ratio[("ponder S=2", "none")] < 4.0
    assert 4.0 < flop_ratio[("latent N=1 J=1", "none")] < 6.0
    assert flop_ratio[("none", "full")] > 1.0  # recompute adds a forward of the layers
    assert all(float(r["CPU ms"]) > 0 and float(r["wall ms"]) > 0 for r in times)
    memory = table(report, "| mode | recompute none MiB")
    assert [r["mode"] for r in memory] == ["none"]  # the only memory mode among those asked for
    assert float(memory[0]["recompute none MiB"]) > 0 and float(memory[0]["recompute full MiB"]) > 0
    assert memory[0]["recompute selective MiB"] == "-"


def test_prefill_benchmark_tiny(tmp_path):
    output = tmp_path / "hf_prefill.md"
    printed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "hf_prefill_ttft.py"), "--prompt", "8", "--hidden", "64",
         "--layers", "1", "--vocab", "64", "--repeats", "1", "--output", str(output)],
        env=child_env(), cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    rows = table(output.read_text(), "| mode | Jacobi prefill")
    assert [r["mode"] for r in rows] == ["latent N=1", "latent N=2"]
    assert all(float(r["Jacobi prefill, J=3 (s)"]) > 0 and float(r["sequential prefill (s)"]) > 0 for r in rows)
    assert rows[0]["mode"] in printed


@pytest.mark.slow
def test_training_dynamics_study_tiny(tmp_path):
    """Stages lr and init at 4 steps on the built-in corpus: the init stage takes each method's best LR."""
    env = child_env()
    out, doc = tmp_path / "dyn", tmp_path / "report.md"
    study = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "training_dynamics.py"), "--corpora", "stdlib", "--stages", "lr",
         "init", "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "training_dynamics_report.py"), "--out", str(out),
                    "--doc", str(doc)], env=env, cwd=REPO, check=True, capture_output=True, text=True)
    rows = table(doc.read_text(), "| method | lr | init")
    assert sorted((r["method"], r["init"]) for r in rows) == sorted(
        [(m, "megatron") for m in ("vanilla", "ponder S=3", "latent N=1") for _ in range(3)]
        + [(m, "ponderlm") for m in ("vanilla", "ponder S=3", "latent N=1")])
    for method in ("vanilla", "ponder S=3", "latent N=1"):
        sweep = {r["lr"]: float(r["valid loss"]) for r in rows if r["method"] == method and r["init"] == "megatron"}
        assert sorted(sweep) == ["0.001", "0.003", "0.01"]
        paper = next(r for r in rows if r["method"] == method and r["init"] == "ponderlm")
        assert sweep[paper["lr"]] == min(sweep.values())  # the init stage starts from the best LR
    assert all(r["Jacobi residual (last round)"] != "-" for r in rows if r["method"] == "latent N=1")
    assert (tmp_path / "report_stdlib.png").stat().st_size > 10_000


@pytest.mark.slow
def test_training_dynamics_grad_rounds_tiny(tmp_path):
    """The grad-rounds stage (issue 24) at 8 steps: latent K=1 and K=all and vanilla; the report's
    section counts a pass without a graph as its forward only and keeps the rest of the doc."""
    env = child_env()
    out, doc = tmp_path / "dyn", tmp_path / "report.md"
    study = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "training_dynamics.py"), "--corpora", "stdlib", "--stages",
         "grad-rounds", "--grad-counts", "1", "all", "--modes", "none", "latent", "--jobs", "1", "--train-iters", "4",
         "--long-iters", "8", "--eval-interval", "2", "--eval-iters", "1", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    assert "--jacobi-grad-rounds 1" in (out / "stdlib/latent-lr0.003-ponderlm-wu20-scaledefault-8-grad1/run.json").read_text()
    doc.write_text("# kept\n\n## Another section\n\nkept too\n")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "training_dynamics_report.py"), "--grad-rounds",
                    "--long-iters", "8", "--out", str(out), "--doc", str(doc)],
                   env=env, cwd=REPO, check=True, capture_output=True, text=True)
    text = doc.read_text()
    assert text.startswith("# kept\n\n## Another section\n\nkept too\n")
    rows = {r["run"]: r for r in table(text, "| run | FLOPs / token")}
    assert sorted(rows) == ["latent N=1, K=1", "latent N=1, K=all", "vanilla"]
    assert rows["latent N=1, K=all"]["vs K=all"] == "1.000x" and rows["vanilla"]["vs vanilla"] == "1.00x"
    # J=2: 15 slot-blocks forward-only-or-3x (1 + 2 x 2 no graph, 2 x 2 x 3 with) against 3 x 7.
    assert 0.6 < float(rows["latent N=1, K=1"]["vs K=all"].rstrip("x")) < 0.8
    assert all(float(r["peak RSS MiB"].split()[0]) > 100 for r in rows.values())
    assert (tmp_path / "report_grad_rounds_stdlib.png").stat().st_size > 10_000


@pytest.mark.parametrize("rounds", [1, 2])
def test_benchmark_forward_runs_the_modes_j(megatron_world_of_one, single_intra_op_thread, rounds):
    """The benchmarks' training forward (mode_cost.training_loss, also used by hf_vs_megatron,
    saved_intermediates and pipeline_recompute) runs the mode's J, not ``jacobi_eval_rounds``
    (3): a latent N=2 step is N + J + 1 decoder passes. Without it the "latent N=2 J=2" rows ran
    J=3 against the HF model's J=2 and read as a 1.25x regression."""
    import importlib

    import torch
    from megatron_ponder.variants import variant

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        mode_cost = importlib.import_module("mode_cost")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    model = mode_cost.build(mode_cost.SHAPES["tiny"], variant("latent2", rounds=(rounds, rounds)), "none")
    passes = []
    model.decoder.register_forward_hook(lambda module, args, output: passes.append(1))
    tokens = torch.randint(0, mode_cost.SHAPES["tiny"]["vocab"], (2, 8))
    positions = torch.arange(8).expand(2, -1)
    loss = mode_cost.training_loss(model, tokens, positions, tokens)
    assert loss.shape == (2, 8)
    assert len(passes) == 2 + rounds + 1
