"""The README's compatibility table names the versions CI really installs (.ci/constraints.txt)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pins():
    """{(package, "3.11" or "3.12"): version} from the constraints file's per-Python lines."""
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        match = re.match(r"([\w-]+)==([\w.+]+); python_version (<|>=) \"3.12\"", line)
        if match:
            pins[(match.group(1), "3.11" if match.group(3) == "<" else "3.12")] = match.group(2)
    return pins


def test_the_compatibility_table_names_the_pinned_versions():
    pins = _pins()
    rows = {line.split("|")[1].strip(): line for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("| 3.1") and "tested in CI" in line.split("|")[2]}  # the rows CI runs
    assert set(rows) == {"3.11", "3.12"}
    for python, row in rows.items():
        for package in ("megatron-core", "torch", "transformers"):
            assert f"{pins[(package, python)]}" in row, (python, package, pins[(package, python)])
