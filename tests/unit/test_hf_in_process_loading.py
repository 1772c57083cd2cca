"""An exported model loaded in a process where the CPU runtime is active gives the right logits.

The CPU runtime (``runtime/cpu.py``) wraps torch's tensor factories. Before the fix, that made
``with torch.device("meta")`` (transformers' ``from_pretrained``) stop applying to them, and RoPE's
``inv_freq`` came back uninitialised: wrong logits (max abs 1.66), no warning. The test runs what a
user runs, in a fresh interpreter (the bug depended on what ran first in the process): the README's
"Using the model" snippet (``initialize_parallel()`` patches torch), then a tiny Megatron LLaMA
checkpoint (mode ``none``: the stock LlamaForCausalLM; ``latent``: the remote code) exported and
loaded with ``AutoModelForCausalLM.from_pretrained``; logits equal to the Megatron model's.

Run: OMP_NUM_THREADS=1 python -m pytest tests/unit/test_hf_in_process_loading.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

from support.torchrun import REPO, child_env

CHECK = """
import json, sys, tempfile
from pathlib import Path
import torch, transformers
sys.path.insert(0, {unit_dir!r})
from test_hf_conversion import VOCAB, _tokens, tiny_megatron_checkpoint
from megatron_ponder.hf.export import export_checkpoint
from megatron_ponder.runtime.cpu import cpu_megatron_enabled
from support.tiny_models import relative_error

assert cpu_megatron_enabled(), "the README snippet should have switched the CPU runtime on"
errors = {{}}
for mode, flags in (("none", {{}}), ("latent", dict(ponder_mode="latent", num_latent_thoughts=1))):
    root = Path(tempfile.mkdtemp())
    model = tiny_megatron_checkpoint("llama", root / "megatron", **flags)
    out = export_checkpoint(str(root / "megatron"), str(root / "hf"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), trust_remote_code=True, dtype=torch.float32).eval()
    tokens, positions = _tokens()
    with torch.no_grad():
        errors[mode] = relative_error(hf_model(tokens).logits, model(tokens, positions, None)[..., :VOCAB])
print("RELATIVE_ERRORS", json.dumps(errors))
"""


def readme_snippet() -> str:
    """The first python block under the README's "## Using the model"."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Using the model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_export_loads_with_the_right_logits_after_the_readme_snippet(tmp_path):
    script = tmp_path / "user_session.py"
    # Under a main guard: the checkpoint writer starts a multiprocessing manager (spawn).
    body = readme_snippet() + CHECK.format(unit_dir=str(REPO / "tests" / "unit"))
    script.write_text('if __name__ == "__main__":\n' + textwrap.indent(body, "    "))
    result = subprocess.run([sys.executable, str(script)], env=child_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RELATIVE_ERRORS"))
    errors = json.loads(line.split(" ", 1)[1])
    assert errors["none"] < 1e-4 and errors["latent"] < 1e-4, errors
