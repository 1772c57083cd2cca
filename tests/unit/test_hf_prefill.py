"""The latent decoder's two prompt fillings: ``prefill="jacobi"`` (default) and ``"sequential"``.

* Jacobi prefill = the scoring forward over the prompt (N initial passes, J rounds, final pass)
  whose final pass fills the KV cache: its first logits equal ``model(prompt, num_jacobi_rounds=J)``
  at the prompt's last position.
* Every later token is the exact sequential step given that cache: equal to a continuation
  computed here without any cache (full passes over the slot sequence, one new slot per pass)
  from the same prompt thoughts. A control built from the sequential prompt thoughts differs.
* With J >= N*P both prefills give the same tokens; at small J they differ (the default matters).
* Ponder mode: the prompt is parallel and exact either way.

Run: OMP_NUM_THREADS=1 python -m pytest tests/unit/test_hf_prefill.py
"""

from __future__ import annotations

import pytest
import torch
from support.hf_tiny_models import ARCHITECTURES, tiny_ponder_lm

from megatron_ponder.hf.remote_code.modeling_ponder_lm import _CachedDecoder

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

PROMPT, NEW = 5, 5
# Cached single-slot steps and full passes round differently in fp32. A random LLaMA with weights
# std 0.3 is chaotic enough to amplify that to 1.6e-4 over 2 x 5 prompt thoughts (its own fp32 vs
# fp64 forward differs as much); at std 0.2 the largest error is 1.4e-6 on every backbone, and the
# controls below still differ by 7e-2 to 0.9.
WEIGHT_STD = 0.2
STEP_TOLERANCE = 1e-5


def relative_error(actual, expected) -> float:
    return float((actual - expected).norm() / expected.norm())


def prompt(seed: int = 0):
    return torch.randint(0, 60, (2, PROMPT), generator=torch.Generator().manual_seed(seed))


def decode_greedily(model, prompt_ids, rounds):
    """Drive the cached decoder by hand -> (tokens [b, NEW], logits: NEW tensors [b, V])."""
    ones = torch.ones_like(prompt_ids)
    decoder = _CachedDecoder(model, prompt_ids, ones, torch.arange(PROMPT).expand(2, -1), rounds)
    logits = [decoder.prefill_logits]
    tokens = [logits[-1].argmax(-1)]
    for _ in range(NEW - 1):
        logits.append(decoder.append(tokens[-1]))
        tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, dim=1), logits


def uncached_continuation(model, prompt_ids, prompt_rounds, new_tokens):
    """Logits after each of ``new_tokens`` [b, NEW-1], from the prompt's thoughts after
    ``prompt_rounds`` Jacobi rounds, each later slot from a full pass over all slots so far."""
    thoughts_per_token = model.config.num_latent_thoughts
    positions = torch.arange(PROMPT).expand(2, -1)
    token_inputs = model.embed_tokens(prompt_ids, positions)
    thoughts = model._latent_thoughts(token_inputs, positions, torch.ones_like(prompt_ids), prompt_rounds)
    slots = torch.stack([token_inputs, *thoughts], dim=2).flatten(1, 2)  # [b, (N+1)P, h]
    slot_positions = positions.repeat_interleave(thoughts_per_token + 1, dim=1)
    logits = []
    for step in range(new_tokens.size(1)):
        position = torch.full((2, 1), PROMPT + step)
        slot = model.embed_tokens(new_tokens[:, step:step + 1], position)  # [b, 1, h]
        for _ in range(thoughts_per_token + 1):  # token slot, then its thoughts; the last output -> logits
            slots = torch.cat([slots, slot], dim=1)
            slot_positions = torch.cat([slot_positions, position], dim=1)
            hidden = model.transformer_pass(slots, slot_positions, torch.ones_like(slot_positions))
            slot = hidden[:, -1:]
        logits.append(model.output_logits(slot[:, 0]))
    return logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("num_thoughts", [1, 2])
def test_jacobi_prefill_is_the_scoring_forward_then_exact_steps(arch, num_thoughts):
    model = tiny_ponder_lm(arch, "latent", num_latent_thoughts=num_thoughts, seed=3, weight_std=WEIGHT_STD)
    prompt_ids = prompt()
    exact_rounds = num_thoughts * PROMPT
    with torch.no_grad():
        for rounds in (0, 1, 3):
            tokens, logits = decode_greedily(model, prompt_ids, rounds)
            scored = model(prompt_ids, num_jacobi_rounds=rounds).logits[:, -1]
            assert relative_error(logits[0], scored) < 1e-5, rounds
            later = uncached_continuation(model, prompt_ids, rounds, tokens[:, :-1])
            for step, (cached, uncached) in enumerate(zip(logits[1:], later, strict=True)):
                assert relative_error(cached, uncached) < STEP_TOLERANCE, (rounds, step)
        # control: the same steps after the sequential prompt thoughts differ (the cache matters)
        _, logits = decode_greedily(model, prompt_ids, 0)
        tokens_used = torch.stack([step.argmax(-1) for step in logits[:-1]], dim=1)
        control = uncached_continuation(model, prompt_ids, exact_rounds, tokens_used)
        assert relative_error(logits[1], control[0]) > 1e-2


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("num_thoughts", [1, 2])
def test_prefills_agree_once_jacobi_reaches_the_fixed_point(arch, num_thoughts):
    model = tiny_ponder_lm(arch, "latent", num_latent_thoughts=num_thoughts, seed=4, weight_std=WEIGHT_STD)
    prompt_ids = prompt(1)
    with torch.no_grad():
        sequential = model.generate(prompt_ids, max_new_tokens=NEW, prefill="sequential")
        jacobi = model.generate(prompt_ids, max_new_tokens=NEW, prefill="jacobi",
                                num_jacobi_rounds=num_thoughts * PROMPT)
        _, sequential_logits = decode_greedily(model, prompt_ids, None)
        _, jacobi_logits = decode_greedily(model, prompt_ids, num_thoughts * PROMPT)
        _, early_logits = decode_greedily(model, prompt_ids, 0)
    assert torch.equal(sequential, jacobi)
    for exact, parallel in zip(sequential_logits, jacobi_logits, strict=True):
        assert relative_error(parallel, exact) < STEP_TOLERANCE
    assert relative_error(early_logits[0], sequential_logits[0]) > 1e-3  # J = 0 is not there


def test_default_prefill_is_jacobi_with_the_eval_rounds():
    model = tiny_ponder_lm("llama", "latent", num_latent_thoughts=2, jacobi_eval_rounds=1, seed=5,
                           weight_std=WEIGHT_STD)
    prompt_ids = prompt(2)
    with torch.no_grad():
        default = model.generate(prompt_ids, max_new_tokens=NEW)
        jacobi_one = model.generate(prompt_ids, max_new_tokens=NEW, prefill="jacobi", num_jacobi_rounds=1)
        sequential = model.generate(prompt_ids, max_new_tokens=NEW, prefill="sequential")
    assert torch.equal(default, jacobi_one)
    assert not torch.equal(default, sequential)  # at J = 1 the papers' decoder continues differently


def test_ponder_prefill_is_exact_either_way():
    model = tiny_ponder_lm("gpt_neox", "ponder", ponder_steps=2, seed=6, weight_std=WEIGHT_STD)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt(), max_new_tokens=NEW),
                           model.generate(prompt(), max_new_tokens=NEW, prefill="sequential"))


def test_bad_prefill_arguments_are_clear_errors():
    model = tiny_ponder_lm("llama", "latent", weight_std=WEIGHT_STD)
    with pytest.raises(ValueError, match="use 'jacobi' or 'sequential'"):
        model.generate(prompt(), max_new_tokens=2, prefill="parallel")
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model.generate(prompt(), max_new_tokens=2, use_cache=False, prefill="jacobi")
    with pytest.raises(ValueError, match="applies to prefill='jacobi'"):
        model.generate(prompt(), max_new_tokens=2, prefill="sequential", num_jacobi_rounds=3)
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        model.generate(prompt(), max_new_tokens=2, num_jacobi_rounds=-1)
