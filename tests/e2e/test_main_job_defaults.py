"""The main job's per-mode defaults are the ones docs/training.md names (from the training-dynamics study).

The script runs as a torchrun worker would (LOCAL_RANK set) with ``PYTHON`` a stand-in that records
the entry point's command line instead of training, so this checks what a user's run receives.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from support.torchrun import REPO

SCRIPT = REPO / "examples" / "pretrain_ponder_gpt.sh"
DOC = REPO / "docs" / "training.md"
# The doc table's columns: the mode, then one pretrain flag per column.
HEADER = "| PONDER_MODE |"

RECORDER = """#!{python}
import json, sys
if sys.argv[1:2] == ["-c"]:
    sys.exit(1)  # the script's CUDA probe: no GPU here
with open({out!r}, "w") as out:
    json.dump(sys.argv[1:], out)
"""


def documented_defaults():
    """mode -> {flag: value} from the table under the doc's per-mode defaults heading."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    flags = [cell.strip().strip("`") for cell in lines[start].strip("|").split("|")][1:]
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(flags, cells[1:], strict=True))
    return table


def script_command(tmp_path, mode, *flags, **settings):
    """The entry point's arguments from ``examples/pretrain_ponder_gpt.sh`` with these settings."""
    recorded = tmp_path / f"{mode}.json"
    fake = tmp_path / "python"
    fake.write_text(RECORDER.format(python=sys.executable, out=str(recorded)))
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("LR", "PONDER_MODE", "INIT_STYLE", "LR_WARMUP_FRACTION", "INPUT_EMBEDDING_SCALE", "GRAD_PASSES")}
    env.update(PYTHON=str(fake), PONDER_MODE=mode, LOCAL_RANK="0", RANK="1", RUN_DIR=str(tmp_path / "run"), **settings)
    subprocess.run(["bash", str(SCRIPT), *flags], env=env, check=True, capture_output=True, text=True, timeout=60)
    return json.loads(recorded.read_text())


def flag_values(argv):
    """{flag: value} of a command line (the last occurrence wins, as argparse does)."""
    return {flag: value for flag, value in zip(argv, argv[1:]) if flag.startswith("--")}


def test_the_doc_names_every_mode():
    assert sorted(documented_defaults()) == ["latent", "none", "ponder"]


@pytest.mark.parametrize("mode", ["latent", "ponder", "none"])
def test_the_main_job_passes_the_documented_defaults(tmp_path, mode):
    received = flag_values(script_command(tmp_path, mode))
    assert received["--ponder-mode"] == mode
    for flag, value in documented_defaults()[mode].items():
        if value == "(mode default)":
            assert flag not in received, f"{mode}: {flag} passed, the doc says the mode's default"
        else:
            assert received.get(flag) == value, f"{mode}: {flag} is {received.get(flag)}, the doc says {value}"


def test_an_explicit_setting_still_wins(tmp_path):
    received = flag_values(script_command(tmp_path, "ponder", LR="7e-4", INIT_STYLE="megatron", LR_WARMUP_FRACTION="0.1"))
    assert (received["--lr"], received["--init-style"], received["--lr-warmup-fraction"]) == ("7e-4", "megatron", "0.1")
    assert flag_values(script_command(tmp_path, "ponder", "--lr", "2e-4"))["--lr"] == "2e-4"  # appended flags win
    assert flag_values(script_command(tmp_path, "latent", GRAD_PASSES="all"))["--jacobi-grad-rounds"] == "all"
    assert "--ponder-grad-steps" not in flag_values(script_command(tmp_path, "ponder", GRAD_PASSES=""))


def test_grad_passes_without_passes_to_truncate_is_refused(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        script_command(tmp_path, "none", GRAD_PASSES="2")
    assert "only ponder and latent" in refused.value.stderr


def test_the_study_checked_the_settings_the_doc_names():
    """benchmarks/training_dynamics.py's ``defaults`` stage runs exactly the documented settings."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from training_dynamics import DEFAULTS

    for mode, flags in documented_defaults().items():
        studied = DEFAULTS[mode]
        warmup = flags["--lr-warmup-fraction"]
        assert (float(flags["--lr"]), flags["--init-style"]) == (studied["lr"], studied["init"]), mode
        assert studied["warmup"] == (20 if warmup == "(mode default)" else round(float(warmup) * 300)), mode
        scale = flags["--input-embedding-scale"]
        assert studied.get("scale") == {"(mode default)": None, "sqrt-hidden": math.sqrt(128)}[scale], mode
        passes = {flags["--ponder-grad-steps"], flags["--jacobi-grad-rounds"]} - {"(mode default)"}
        assert studied.get("grad") == (int(passes.pop()) if passes else None), mode
