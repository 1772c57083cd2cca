"""The reproduction report step builds its table and plot from the runs' metrics files."""

import json
import math
from pathlib import Path

from benchmarks.reproduction_report import load_run, write_report

SEQ, BATCH, STEPS = 16, 2, 10


def write_run(folder: Path, name: str, flops_per_step: float, final_valid: float, parameters: int,
              steps: int = STEPS) -> Path:
    """A run folder as reproduce_papers.py leaves it: run.json and a pretrain metrics file."""
    folder.mkdir(parents=True)
    command = (f"python -m megatron_ponder.pretrain --default-corpus {folder.parent}/data --seq-length {SEQ} "
               f"--micro-batch-size {BATCH}")
    (folder / "run.json").write_text(json.dumps(dict(run=name, command=command, parameters=parameters,
                                                     embedding_parameters=parameters // 4, wall_seconds=12.5)))
    records = [dict(kind="valid", iteration=0, loss=8.0)]
    for step in range(1, steps + 1):
        records.append(dict(kind="train", iteration=step, loss=8.0 - 0.1 * step, grad_norm=1.0, lr=1e-3,
                            skipped=False, consumed_samples=step * BATCH, step_seconds=0.1, flops=flops_per_step))
        if step == steps // 2:
            records.append(dict(kind="valid", iteration=step, loss=7.0))
    records.append(dict(kind="valid", iteration=steps, loss=final_valid))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_report_table_from_metrics(tmp_path):
    folders = [
        write_run(tmp_path / "a", "vanilla-S", 1e9, 5.0, 1_000_000),
        write_run(tmp_path / "b", "ponder-S", 4e9, 4.5, 1_000_000),
    ]
    doc = tmp_path / "docs" / "reproduction.md"
    report = write_report(folders, doc, command="python benchmarks/reproduce_papers.py", relative_to=tmp_path)
    assert doc.read_text() == report
    # the final table's row (the first one naming the run): parameters (non-embedding), FLOPs, ratio,
    # tail train loss, valid loss, PPL, wall seconds
    row = next(line for line in report.splitlines() if line.startswith("| ponder-S |"))
    ponder = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(ponder) == 8
    assert ponder[1] == "1.00M (0.75M)"
    assert ponder[2] == f"{4e9 * STEPS:.3g}"
    assert ponder[3] == "4.00x"
    assert ponder[4] == f"{8.0 - 0.1 * STEPS:.4f}"  # last 10% of 10 steps = the last step
    assert ponder[5] == "4.5000"
    assert ponder[6] == f"{math.exp(4.5):.2f}"
    assert ponder[7] == "12"
    assert f"{STEPS} steps, {STEPS * BATCH * SEQ:,} training tokens" in report
    # validation-over-training table: a column per evaluation, labelled with training tokens
    assert f"| run | 0 | {STEPS // 2 * BATCH * SEQ:,} | {STEPS * BATCH * SEQ:,} |" in report
    assert "| ponder-S | 8.0000 | 7.0000 | 4.5000 |" in report
    assert "Warning" not in report
    assert str(tmp_path) not in report  # commands are shown relative to the repository
    png = doc.with_name("reproduction_loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![loss curves](reproduction_loss.png)" in report


def test_report_flags_unequal_tokens(tmp_path):
    folders = [
        write_run(tmp_path / "a", "vanilla-S", 1e9, 5.0, 1_000_000),
        write_run(tmp_path / "b", "latent-S", 6e9, 4.8, 1_000_000, steps=STEPS - 2),
    ]
    report = write_report(folders, tmp_path / "r.md", command="x", plot=False)
    assert "Warning: latent-S trained on a different number of tokens" in report
    assert load_run(folders[1]).flops_at(STEPS) == 6e9 * (STEPS - 2)
