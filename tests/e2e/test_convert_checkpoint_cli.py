"""tools/convert_checkpoint.py on bad input: exit status 2 and one line ``error: ...`` naming the problem."""

import subprocess
import sys

from support.torchrun import REPO, child_env

TOOL = str(REPO / "tools" / "convert_checkpoint.py")


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], env=child_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def test_bad_input_exits_2_with_one_line(tmp_path):
    missing = run_tool("export", "--load", tmp_path / "nothing", "--out", tmp_path / "hf")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nothing'} holds no checkpoint: pass a --save folder or an iter_* folder")
