"""Generation edge inputs in the exported model behave like stock transformers or better (issue 26,
finding 10): an empty prompt or an id outside the vocabulary is one plain ValueError (stock: a
reshape error / IndexError deep in a layer, a device-side assert on a GPU); max_new_tokens < 1 is
refused with stock's own words; an over-long prompt generates as stock's does."""

import pytest
import torch

from support.hf_tiny_models import MAX_POSITIONS, VOCAB, tiny_backbone_config, tiny_ponder_lm

MODES = ["ponder", "latent"]


@pytest.fixture(scope="module")
def stock():
    import transformers

    return transformers.AutoModelForCausalLM.from_config(tiny_backbone_config("llama")).eval()


def _generate(model, input_ids, **kwargs):
    return model.generate(input_ids=input_ids, do_sample=False, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prompt, message", [
    (torch.zeros(1, 0, dtype=torch.long), "at least one token per row"),
    (torch.tensor([[1, VOCAB + 7]]), f"token id {VOCAB + 7}, outside this model's vocabulary 0..{VOCAB - 1}"),
    (torch.tensor([[1, -3]]), "token id -3, outside"),
])
def test_prompts_the_model_cannot_embed_are_one_plain_error(stock, mode, prompt, message):
    with pytest.raises(ValueError, match=message):
        _generate(tiny_ponder_lm("llama", mode), prompt, max_new_tokens=3)
    with pytest.raises((RuntimeError, IndexError)):  # stock: an error from inside the layers
        _generate(stock, prompt, max_new_tokens=3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("count", [0, -1])
def test_max_new_tokens_below_one_is_refused_as_stock_does(stock, mode, count):
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError) as stock_error:
        _generate(stock, prompt, max_new_tokens=count)
    with pytest.raises(ValueError) as error:
        _generate(tiny_ponder_lm("llama", mode), prompt, max_new_tokens=count)
    assert str(error.value) == str(stock_error.value)


@pytest.mark.parametrize("mode", MODES)
def test_a_prompt_longer_than_the_position_table_generates_like_stock(stock, mode):
    prompt = torch.randint(0, VOCAB, (1, MAX_POSITIONS + 5), generator=torch.Generator().manual_seed(0))
    assert _generate(stock, prompt, max_new_tokens=2).shape == (1, MAX_POSITIONS + 7)
    assert _generate(tiny_ponder_lm("llama", mode), prompt, max_new_tokens=2).shape == (1, MAX_POSITIONS + 7)


@pytest.mark.parametrize("mode", MODES)
def test_a_prompt_that_already_fills_max_length_comes_back_unchanged(mode):
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(_generate(tiny_ponder_lm("llama", mode), prompt, max_length=3), prompt)
