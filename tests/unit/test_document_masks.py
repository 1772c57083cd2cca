"""Documents packed into one sample (``--reset-position-ids --reset-attention-mask --eod-mask-loss``).

A packed sample of two documents gives, per token, the loss each document gives alone, and the
gradients of the packed loss are the sum of the documents' own (fp32, 1e-6), in every mode and
architecture: positions restart at each end-of-document token (RoPE in mode ``none`` too),
no token or thought slot attends across a document boundary, EOD tokens do not count. The
batches are built by Megatron's ``_get_ltor_masks_and_position_ids``, as the data layer's are.
"""

import pytest
import torch

from megatron_ponder.variants import MODES
from support.document_packing import alone_token_losses, packed_and_alone, sample_batch
from support.tiny_models import tiny_model

# Relative to max(1, |value|): a few fp32 ulps (softmax rows over the document's keys alone
# against a row of masked keys sum in a different order).
TOLERANCE = 1e-6


def _loss_and_grads(model, batch):
    """(per-token loss [b, L], {name: grad}) of sum(loss * loss_mask)."""
    model.zero_grad(set_to_none=True)
    loss = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    (loss * batch["loss_mask"]).sum().backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("style", ["llama", "gpt2", "neox"])
@pytest.mark.parametrize("mode", list(MODES))
def test_a_packed_sample_equals_its_documents_alone(megatron_world_of_one, style, mode):
    model = tiny_model(style, **MODES[mode])
    packed, alone = packed_and_alone()
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    results = [_loss_and_grads(model, batch) for batch in alone]
    expected_loss = alone_token_losses([loss for loss, _ in results])
    counted = packed["loss_mask"].bool()
    assert counted.sum() == packed["loss_mask"].numel() - 4  # the two EODs of each sample are out
    loss_error = ((packed_loss - expected_loss) / expected_loss.abs().clamp_min(1.0))[counted].abs().max().item()
    assert loss_error <= TOLERANCE, f"per-token loss differs by {loss_error:.2e} (relative)"
    # Each document appears once in each of the two packed samples.
    for name, grad in packed_grads.items():
        expected = 2 * sum(grads[name] for _, grads in results)
        error = (grad - expected).abs().max().item()
        assert error <= TOLERANCE * max(1.0, expected.abs().max().item()), f"{name}: gradient differs by {error:.2e}"


@pytest.mark.parametrize("mode", ["none", "latent2"])
def test_without_the_document_flags_the_second_document_sees_the_first(megatron_world_of_one, mode):
    """The equality above is not a property of the model: packed causally, it fails."""
    model = tiny_model("llama", **MODES[mode])
    packed, alone = packed_and_alone()
    causal = sample_batch(list(packed["tokens"]), document_masks=False)
    loss, _ = _loss_and_grads(model, causal)
    expected = alone_token_losses([_loss_and_grads(model, batch)[0] for batch in alone])
    first_length = alone[0]["tokens"].size(1)
    assert (loss[0, :first_length - 1] - expected[0, :first_length - 1]).abs().max() <= TOLERANCE
    assert (loss[0, first_length:] - expected[0, first_length:]).abs().max() > 1e-3


def test_thought_slots_see_exactly_what_their_token_sees():
    from megatron_ponder.model.interleave import interleave_attention_mask

    packed, _ = packed_and_alone()
    mask = packed["attention_mask"]  # [2, 1, L, L]
    slots = interleave_attention_mask(mask, 3)  # N = 2 thoughts per token
    token_of_slot = torch.arange(slots.size(-1)) // 3
    for b in range(2):
        sees_token = ~mask[b, 0][token_of_slot][:, token_of_slot]  # token i may attend token j
        order = torch.arange(slots.size(-1))
        assert torch.equal(~slots[b, 0], sees_token & (order[None, :] <= order[:, None]))


def test_the_rope_table_follows_restarted_positions_in_mode_none(megatron_world_of_one):
    """GPTModel rotates by slot index; mode none must rotate by the batch's positions (RoPE restarts)."""
    model = tiny_model("llama")
    packed, _ = packed_and_alone()
    seen = []
    original = model.decoder.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["rotary_pos_emb"])
        return original(*args, **kwargs)

    model.decoder.forward = spy
    model(packed["tokens"], packed["position_ids"], packed["attention_mask"], labels=packed["labels"])
    table = model.rotary_pos_emb.get_emb(model.max_sequence_length)
    assert torch.equal(seen[0], table[packed["position_ids"].t()].squeeze(2))
    assert "forward" not in vars(model.rotary_pos_emb)  # GPTModel's own RoPE is back after the call


def test_the_te_spec_gets_a_mask_type_that_applies_the_mask():
    """On CPU, on Megatron's local layer spec (same self-attention structure as the TE spec)."""
    import types

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_ponder.model.context_parallel_attention import ContextParallelLocalAttention
    from megatron_ponder.model.specs import check_attention_mask_supported, document_mask_attention

    spec = get_gpt_layer_local_spec()
    changed = document_mask_attention(spec, types.SimpleNamespace(context_parallel_size=1))
    assert changed.submodules.self_attention.params["attn_mask_type"] == AttnMaskType.arbitrary
    assert spec.submodules.self_attention.params["attn_mask_type"] == AttnMaskType.causal  # a copy
    under_cp = document_mask_attention(spec, types.SimpleNamespace(context_parallel_size=2))
    assert under_cp.submodules.self_attention.submodules.core_attention.module is ContextParallelLocalAttention

    te_masked = types.SimpleNamespace(transformer_impl="transformer_engine", reset_attention_mask=True)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).triu(1)
    check_attention_mask_supported(te_masked, mask)
    with pytest.raises(ValueError, match="needs attention_mask"):
        check_attention_mask_supported(te_masked, None)


def test_rope_fusion_is_off_when_the_samples_of_a_microbatch_have_their_own_positions():
    """TE's fused RoPE takes one table per microbatch: with --reset-position-ids and several
    samples per microbatch the run asks for the unfused RoPE (and the log says why)."""
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.model_config import _derived_fields

    def rope_fusion(*flags):
        args = parse_args(["--mock-data", "--transformer-impl", "transformer_engine", *flags])
        args.tokenizer_vocab_size = 100
        return _derived_fields(args)["apply_rope_fusion"]

    assert rope_fusion("--micro-batch-size", "2")  # TE spec: the fused kernel where TE is
    assert rope_fusion("--reset-position-ids", "--micro-batch-size", "1")  # one sample: one table
    assert not rope_fusion("--reset-position-ids", "--micro-batch-size", "2")
