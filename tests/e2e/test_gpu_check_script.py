"""tools/gpu_check.sh, the prepared check for a lent GPU: its CPU smoke mode runs every part (tests/gpu,
training with resume per mode, the throughput benchmark with the planner's memory estimate) with
the same code at the smallest size, so the check's own logic is tested where no GPU is; without
CUDA and without the smoke flag it stops at once with one line."""

import json
import math
import subprocess

import pytest
import torch

from support.torchrun import REPO, child_env

SCRIPT = REPO / "tools" / "gpu_check.sh"
MODES = ("none", "ponder", "latent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_and_without_the_smoke_flag_it_stops_at_once_with_one_line(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], env=child_env(), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--cpu-smoke" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_cpu_smoke_run_passes_every_part_and_writes_the_json(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], env=child_env(OUT=str(out)), capture_output=True,
                          text=True, timeout=400, cwd=tmp_path)
    report_path = out / "gpu_check.json"  # $OUT is where it goes by default
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert f"JSON: {report_path}" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["failed"] == [] and report["environment"]["mode"] == "cpu-smoke"
    rows = {row["part"]: row for row in report["parts"]}
    expected = {"tests/gpu", *(f"train local {m}" for m in MODES), *(f"train te {m}" for m in MODES),
                *(f"bench {m}" for m in MODES)}
    assert set(rows) == expected
    for name in expected:  # the one table has a line per part
        assert any(line.startswith(name + " ") for line in done.stdout.splitlines()), name

    tests = rows["tests/gpu"]["figures"]
    assert tests["failed"] == tests["errors"] == 0 and tests["skipped"] > 0  # on CPU they skip, with reasons
    assert all(reason for reason in tests["skip_reasons"])

    for mode in MODES:
        row = rows[f"train local {mode}"]
        figures = row["figures"]
        assert row["result"] == "pass", row
        assert figures["loss_fell"] and figures["loss_last5"] < figures["loss_first5"]
        assert figures["resume_exact"] and figures["resume_max_rel_diff"] == 0.0 and figures["first_half_reproduced"]
        assert figures["backend"] == "gloo" and len(figures["losses"]) == 20
        assert rows[f"train te {mode}"]["result"] == "skip"  # TE is GPU-only

    for mode in MODES:
        row = rows[f"bench {mode}"]
        figures = row["figures"]
        assert row["result"] == "pass", row
        for key in ("tokens_per_second", "tflops_per_gpu", "mfu", "peak_memory_gib", "planned_memory_gib",
                    "tokens_vs_none", "memory_measured_over_planned"):
            assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
        # The counted peak and the planner agree on this tiny shape within a factor of 2 either way.
        assert 0.5 < figures["memory_measured_over_planned"] < 2.0
    # Every pass is counted: pondering (S=3) and latent thoughts do several times vanilla's work per token.
    assert rows["bench ponder"]["figures"]["tokens_vs_none"] < 1
    assert rows["bench latent"]["figures"]["tokens_vs_none"] < 1
    assert (out / "gpu_check_logs" / "bench.log").is_file()
