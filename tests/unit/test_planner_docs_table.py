"""docs/planning.md's table is what the planner generates (future model changes must regenerate it)."""

from pathlib import Path

from megatron_ponder.planning.table import GPU_COUNTS, HEADER, METHODS, MODELS, planning_rows

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planning.md"
COMMAND = "python tools/plan_run.py --table --seq-length 2048 --global-batch-size 1024"


def _docs_rows():
    lines = DOCS.read_text().splitlines()
    start = lines.index(HEADER[0])
    assert lines[start + 1] == HEADER[1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_docs_table_matches_the_planner():
    assert COMMAND in DOCS.read_text()  # the documented command uses planning_rows' arguments below
    rows = _docs_rows()
    assert len(rows) == len(MODELS) * len(METHODS) * len(GPU_COUNTS)
    # A sample (the whole table takes ~1 min): a single-stage and a pipelined model, two methods.
    for model, method in ((MODELS[0], METHODS[0]), (MODELS[3], METHODS[1])):
        for row in planning_rows(2048, 1024, models=[model], methods=[method], gpu_counts=(8, 512)):
            assert row in rows, f"docs/planning.md is stale, regenerate it with `{COMMAND}`: {row}"
