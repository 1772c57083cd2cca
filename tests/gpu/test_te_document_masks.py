"""Document masks on the Transformer Engine layer spec (CUDA only).

Built with ``reset_attention_mask`` (``--reset-attention-mask``), the TE spec's self-attention
gets ``attn_mask_type=arbitrary``, under which TE applies the batch's mask (Megatron's GPT spec
says ``causal``, under which TE ignores it). A packed batch of two documents then gives, per
token, the loss each document gives alone, in every mode; packed causally it does not (the
check fails when the mask is dropped). Tolerances are TF32-level: TE's GEMMs may use TF32 for
fp32 inputs and pick other kernels for other sequence lengths.
"""

import pytest
import torch

from support.document_packing import alone_token_losses, packed_and_alone, sample_batch
from support.gpu_models import MODES, requires_transformer_engine, te_model

pytestmark = [pytest.mark.gpu, requires_transformer_engine]
TOLERANCE = 2e-3


def _losses(model, batch):
    cuda = {key: None if value is None else value.cuda() for key, value in batch.items()}
    with torch.no_grad():
        return model(cuda["tokens"], cuda["position_ids"], cuda["attention_mask"], labels=cuda["labels"]).float().cpu()


@pytest.mark.parametrize("mode", list(MODES))
def test_te_spec_applies_document_masks(megatron_world_of_one, monkeypatch, mode):
    from megatron.core.transformer.enums import AttnMaskType

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = te_model(mode, "transformer_engine", dtype=torch.float32, reset_attention_mask=True)
    assert model.decoder.layers[0].self_attention.attn_mask_type == AttnMaskType.arbitrary
    packed, alone = packed_and_alone()
    expected = alone_token_losses([_losses(model, batch) for batch in alone])
    counted = packed["loss_mask"].bool()
    error = ((_losses(model, packed) - expected).abs() / expected.abs().clamp_min(1.0))[counted].max()
    assert error <= TOLERANCE, f"{mode}: packed documents differ from the documents alone by {error:.2e}"
    with pytest.raises(ValueError, match="needs attention_mask"):
        _losses(model, sample_batch(list(packed["tokens"]), document_masks=False))

    causal_model = te_model(mode, "transformer_engine", dtype=torch.float32)  # same seed: same weights
    causal = _losses(causal_model, sample_batch(list(packed["tokens"]), document_masks=False))
    crossed = ((causal - expected).abs() / expected.abs().clamp_min(1.0))[counted].max()
    assert crossed > 10 * TOLERANCE, "without the document mask the second document must see the first"
