"""Exported ponder/latent folders load without megatron_ponder and decode correctly with a KV cache.

Every model is saved (weights, config.json with auto_map, the two remote-code files) and then
loaded with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` in a subprocess
in which importing megatron_ponder (or megatron) raises: what a user without this project gets.

KV-cached decoding with the exact prompt filling (ponder: one cache per pass; latent:
``prefill="sequential"``, N+1 single-slot steps per token, the sequential definition of the
thoughts) must give the same greedy tokens as uncached decoding, which re-runs the scoring forward
over the whole sequence each step (latent: with J = N*L Jacobi rounds, equal to the sequential
definition). The default Jacobi prefill is tested in tests/unit/test_hf_prefill.py; here it
decodes a left-padded row as it decodes that row alone. The first-step logits are also compared numerically,
with a control showing the comparison can fail (latent: J=0 differs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.hf_tiny_models import ARCHITECTURES, save_ponder_lm, tiny_ponder_lm

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

MODES = {"ponder": {"ponder_steps": 2}, "latent1": {"num_latent_thoughts": 1}, "latent2": {"num_latent_thoughts": 2}}
CASES = [(arch, mode) for arch in ARCHITECTURES for mode in MODES]

LOADER = r'''
import importlib.abc, json, sys

class RefuseProjectImports(importlib.abc.MetaPathFinder):
    """Simulates a machine where megatron_ponder (and Megatron) are not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("megatron_ponder", "megatron"):
            raise ModuleNotFoundError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, RefuseProjectImports())
import torch

torch.set_num_threads(1)  # tiny models: thread sync would dominate
from transformers import AutoModelForCausalLM

def rel(a, b):
    return float((a - b).norm() / b.norm())

results = {}
for case, directory in json.loads(sys.argv[1]).items():
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    config = model.config
    prompts = torch.randint(0, 60, (2, 5), generator=torch.Generator().manual_seed(0))
    cached = model.generate(prompts, max_new_tokens=6, prefill="sequential")
    uncached = model.generate(prompts, max_new_tokens=6, use_cache=False)
    # left padding: row 0 keeps 3 prompt tokens
    mask = torch.ones_like(prompts)
    mask[0, :2] = 0
    padded = model.generate(prompts, attention_mask=mask, max_new_tokens=6)
    alone = model.generate(prompts[:1, 2:], max_new_tokens=6)
    samples = []
    for use_cache in (True, True, False):
        torch.manual_seed(7)
        samples.append(model.generate(prompts, max_new_tokens=6, do_sample=True, temperature=0.8,
                                      top_k=20, top_p=0.95, use_cache=use_cache,
                                      prefill="sequential")[:, 5:].tolist())
    with torch.no_grad():
        decoder_logits = sys.modules[type(model).__module__]._CachedDecoder(
            model, prompts, torch.ones_like(prompts), torch.arange(5).expand(2, -1)).prefill_logits
        if config.ponder_mode == "latent":
            exact = model(prompts, num_jacobi_rounds=config.num_latent_thoughts * 5).logits[:, -1]
            control = model(prompts, num_jacobi_rounds=0).logits[:, -1]
        else:
            exact = model(prompts).logits[:, -1]
            control = model.backbone(prompts).logits[:, -1]
    results[case] = dict(
        cached=cached[:, 5:].tolist(), uncached=uncached[:, 5:].tolist(),
        padded=padded[0, 5:].tolist(), alone=alone[0, 3:].tolist(), samples=samples,
        first_step_error=rel(decoder_logits, exact), control_error=rel(control, exact),
        loaded_class=type(model).__module__ + "." + type(model).__name__,
        leaked=sorted(m for m in sys.modules if m.startswith(("megatron_ponder", "megatron"))),
    )
print("RESULTS " + json.dumps(results))
'''


@pytest.fixture(scope="module")
def loaded_results(tmp_path_factory):
    """Save every case's model, load and decode all of them in one clean subprocess."""
    root = tmp_path_factory.mktemp("hf_generation")
    directories = {}
    for seed, (arch, mode) in enumerate(CASES):
        directory = root / f"{arch}_{mode}"
        model = tiny_ponder_lm(arch, "ponder" if mode == "ponder" else "latent", seed=seed, **MODES[mode])
        save_ponder_lm(model, directory)
        directories[f"{arch}/{mode}"] = str(directory)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(directories)],
        check=False, cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS "))
    return root, json.loads(line[len("RESULTS "):])


def test_exported_folder_holds_only_weights_config_and_code(loaded_results):
    root, _ = loaded_results
    directory = root / "llama_latent2"
    names = {path.name for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_ponder_lm.py", "modeling_ponder_lm.py"} <= names
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "ponder_lm"
    assert config["architectures"] == ["PonderLMForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ponder_lm.PonderLMConfig",
        "AutoModelForCausalLM": "modeling_ponder_lm.PonderLMForCausalLM",
    }
    assert config["backbone_config"]["model_type"] == "llama"
    assert config["ponder_mode"] == "latent" and config["num_latent_thoughts"] == 2
    for field in ("ponder_steps", "ponder_accumulate", "jacobi_eval_rounds", "input_embedding_scale",
                  "ponder_vocab_size"):
        assert field in config


@pytest.mark.parametrize("arch,mode", CASES)
def test_cached_generation_equals_uncached(loaded_results, arch, mode):
    _, results = loaded_results
    result = results[f"{arch}/{mode}"]
    assert result["loaded_class"].startswith("transformers_modules.")
    assert result["leaked"] == []
    assert result["cached"] == result["uncached"]
    assert result["first_step_error"] < 1e-5
    assert result["control_error"] > 1e-3  # the comparison above can fail
    # a left-padded row decodes as it does alone
    assert result["padded"] == result["alone"]


@pytest.mark.parametrize("arch,mode", CASES)
def test_sampling_is_reproducible(loaded_results, arch, mode):
    _, results = loaded_results
    first, again, uncached = results[f"{arch}/{mode}"]["samples"]
    assert first == again
    assert first == uncached  # same seed, same distribution: same draws with or without the cache
    assert all(0 <= token < 64 for row in first for token in row)
