"""Without CUDA, nothing in megatron_ponder imports Transformer Engine.

On a machine without the CUDA libraries ``import transformer_engine`` raises RuntimeError, which
breaks ``except ImportError`` guards; so the package must not even try. A child process (CUDA
hidden) records every import of ``transformer_engine*`` and of Megatron's TE extension module
together with the file whose code asked for it, imports every module of the package, and
trains a ponder-mode step through the entry point, and mixes top-K. No request may
come from megatron_ponder. (Megatron-Core's own guarded imports are its business and allowed.)
"""

import importlib.util
import json
import subprocess
import sys

from support.torchrun import REPO, child_env

CHILD = r"""
import importlib, json, pkgutil, sys, traceback

WATCHED = ("transformer_engine", "megatron.core.extensions.transformer_engine")
requests = []

class RecordTransformerEngineImports:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(WATCHED):
            frames = [f.filename for f in traceback.extract_stack()[:-1]
                      if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
            requests.append([name, frames[-1] if frames else "?"])
        return None  # let the real finders answer

sys.meta_path.insert(0, RecordTransformerEngineImports())
import megatron_ponder
modules = [m.name for m in pkgutil.walk_packages(megatron_ponder.__path__, "megatron_ponder.")]
for name in modules:
    if name == "megatron_ponder.model.fp8_mixing":
        try:  # GPU-only by design: must refuse with ImportError, having checked CUDA first
            importlib.import_module(name)
            raise SystemExit("fp8_mixing imported on a machine without CUDA")
        except ImportError as error:
            assert "no CUDA device" in str(error), error
        continue
    importlib.import_module(name)

from megatron_ponder.pretrain import main
common = ["--mock-data", "--ponder-mode", "ponder", "--ponder-steps", "1", "--num-layers", "1",
          "--hidden-size", "32", "--num-attention-heads", "2", "--num-query-groups", "2", "--ffn-hidden-size", "64",
          "--seq-length", "16", "--micro-batch-size", "2", "--vocab-size", "128", "--train-iters", "1",
          "--eval-iters", "0", "--log-interval", "1"]
assert main(common) == 0  # dense mixing

import torch
from megatron_ponder.model.vocab_mixing import vocab_parallel_topk_mixture
vocab_parallel_topk_mixture(torch.randn(4, 2, 16), torch.randn(16, 8), 4, None, False).sum()
print("RESULT " + json.dumps({"requests": requests, "modules": len(modules),
                              "te_loaded": "transformer_engine" in sys.modules}))
"""


def test_package_import_and_cpu_training_never_import_transformer_engine(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHILD], env=child_env(CUDA_VISIBLE_DEVICES=""), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["modules"] > 20
    ours = [(name, where) for name, where in result["requests"] if str(REPO / "megatron_ponder") in where]
    assert ours == [], ours
    if importlib.util.find_spec("transformer_engine") is None:  # not installed: nobody may have loaded it
        assert not result["te_loaded"]
