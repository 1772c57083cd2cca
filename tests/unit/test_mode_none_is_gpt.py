"""Mode `none` is stock Megatron GPTModel: same weights, same loss, same gradients, bit for bit.

Bit for bit within one core-attention kernel: the stock local spec with Megatron's
DotProductAttention (``local_attention="unfused"``) and the same spec with the SDPA core attention
(the project's default).
"""

import pytest
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.transformer_config import TransformerConfig

from conftest import causal_mask
from megatron_ponder.model.architectures import build_ponder_gpt, get_style, make_ponder_config
from megatron_ponder.model.sdpa_attention import SDPAttention

SIZE = dict(
    num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=64,
    use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0,
)


@pytest.mark.parametrize("kernel", ["sdpa", "unfused"])
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_mode_none_equals_stock_gpt_model(megatron_world_of_one, style, kernel):
    torch.manual_seed(0)
    ponder = build_ponder_gpt(
        make_ponder_config(style, local_attention=kernel, **SIZE), style, vocab_size=96, max_sequence_length=16,
        transformer_impl="local",
    )
    chosen = get_style(style)
    torch.manual_seed(0)
    stock_config = TransformerConfig(**chosen.config_fields, **SIZE)
    stock_spec = get_gpt_layer_local_spec(normalization=stock_config.normalization)
    if kernel == "sdpa":
        stock_spec.submodules.self_attention.submodules.core_attention = SDPAttention
    stock = GPTModel(
        stock_config,
        stock_spec,
        vocab_size=96,
        max_sequence_length=16,
        share_embeddings_and_output_weights=chosen.share_embeddings_and_output_weights,
        position_embedding_type=chosen.position_embedding_type,
    )
    assert ponder.state_dict().keys() == stock.state_dict().keys()
    for name, tensor in stock.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, ponder.state_dict()[name]), name

    tokens = torch.randint(0, 96, (2, 12))
    labels = torch.randint(0, 96, (2, 12))
    positions = torch.arange(12).expand(2, -1)
    losses = []
    for model in (ponder, stock):
        loss = model(tokens, positions, causal_mask(12), labels=labels)
        loss.sum().backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    stock_grads = dict(stock.named_parameters())
    for name, param in ponder.named_parameters():
        assert torch.equal(param.grad, stock_grads[name].grad), name
