"""transformers older than the `hf` range (5.8): one-line errors, at remote-code load and in conversion.

The range itself is tested by running the HF tests under the installed transformers (leg 1: 5.23,
leg 2: the newest 5.x, then 5.8.0 with tests/hf_cross_version.py: see .ci/run).
"""

import os
import subprocess
import sys

import pytest
from support.hf_tiny_models import save_ponder_lm, tiny_ponder_lm

MESSAGE = ("ImportError: PonderLM models need transformers >= 5.8 (installed: 4.57.6): "
           "pip install 'transformers>=5.8'")


def test_remote_code_refuses_transformers_4_with_one_line(tmp_path):
    save_ponder_lm(tiny_ponder_lm("llama", "latent"), tmp_path / "model")
    code = (
        "import sys, transformers\n"
        "transformers.__version__ = '4.57.6'\n"
        "from transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == MESSAGE


def test_conversion_refuses_transformers_4(monkeypatch):
    import transformers

    from megatron_ponder.hf import require

    assert require("transformers") is transformers
    monkeypatch.setattr(transformers, "__version__", "4.57.6")
    with pytest.raises(ImportError, match=r"^Hugging Face conversion needs transformers >= 5\.8 "
                                          r"\(installed: 4\.57\.6\): pip install -e \"\.\[hf\]\"$"):
        require("transformers")
