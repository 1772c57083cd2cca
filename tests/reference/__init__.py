"""Plain-PyTorch test oracle: a small decoder-only transformer and the pondering / latent-thought
methods written straight from the equations in docs/methods.md.

Nothing here imports Megatron except ``megatron_weights`` (which only reads a state dict).
"""
