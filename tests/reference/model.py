"""A small decoder-only transformer in plain PyTorch, batch-first ([b, s, h]).

Written from scratch as a test oracle; imports nothing from Megatron. It exposes the three
pieces the methods need separately:

  * :meth:`ReferenceModel.embed`  tokens -> input embeddings,
  * :meth:`ReferenceModel.body`   input embeddings -> hidden states after the final norm,
  * :meth:`ReferenceModel.logits` hidden states -> vocabulary logits,

so that the pondering / latent-thought methods can feed arbitrary vectors into ``body``.

Conventions chosen to match a Megatron-Core GPTModel (local spec) loaded with the same weights:
pre-norm residual layers, softmax scale 1/sqrt(head_dim), grouped-query attention where query
head j reads key/value group j // (num_heads / num_query_groups), non-interleaved RoPE
(rotate_half pairs dimension d with d + head_dim/2), exact (erf) GeLU, SwiGLU = silu(gate) * up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReferenceArch:
    vocab_size: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_query_groups: int = 4
    ffn_hidden_size: int = 128
    normalization: str = "LayerNorm"  # "LayerNorm" | "RMSNorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"  # "gelu" | "swiglu"
    position_embedding: str = "learned_absolute"  # "learned_absolute" | "rope"
    max_positions: int = 64
    rotary_base: int = 10000
    rotary_percent: float = 1.0  # RoPE rotates the first int(head_dim * rotary_percent) dims
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
    tied_embeddings: bool = True
    bias: bool = True  # bias on every linear layer (norm biases follow `normalization`)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class Norm(nn.Module):
    """LayerNorm (weight and bias) or RMSNorm (weight only), computed explicitly."""

    def __init__(self, arch: ReferenceArch):
        super().__init__()
        self.kind = arch.normalization
        self.eps = arch.norm_eps
        self.weight = nn.Parameter(torch.ones(arch.hidden_size))
        self.bias = nn.Parameter(torch.zeros(arch.hidden_size)) if self.kind == "LayerNorm" else None
        if self.kind not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"unknown normalization {self.kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "RMSNorm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [-x[d/2:], x[:d/2]]: dimension i is paired with i + d/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, position_ids: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding at explicit (possibly repeated) positions.

    x: [b, n_heads, s, d]; position_ids: [b, s]. Frequencies base^(-2i/d), i < d/2, laid out
    as cat(freqs, freqs) over the d dimensions.
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # [b, s, d/2]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, s, d]
    return x * angles.cos().to(x.dtype) + rotate_half(x) * angles.sin().to(x.dtype)


class Attention(nn.Module):
    def __init__(self, arch: ReferenceArch):
        super().__init__()
        self.arch = arch
        h, d = arch.hidden_size, arch.head_dim
        self.wq = nn.Linear(h, arch.num_heads * d, bias=arch.bias)
        self.wk = nn.Linear(h, arch.num_query_groups * d, bias=arch.bias)
        self.wv = nn.Linear(h, arch.num_query_groups * d, bias=arch.bias)
        self.wo = nn.Linear(arch.num_heads * d, h, bias=arch.bias)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x: [b, s, h] -> [b, s, h]; causal over slot order."""
        a = self.arch
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, a.num_heads, a.head_dim).transpose(1, 2)  # [b, nh, s, d]
        k = self.wk(x).view(b, s, a.num_query_groups, a.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, a.num_query_groups, a.head_dim).transpose(1, 2)
        if a.position_embedding == "rope":
            rot = int(a.head_dim * a.rotary_percent)  # the rest of each head passes unrotated
            q = torch.cat((apply_rope(q[..., :rot], position_ids, a.rotary_base), q[..., rot:]), -1)
            k = torch.cat((apply_rope(k[..., :rot], position_ids, a.rotary_base), k[..., rot:]), -1)
        heads_per_group = a.num_heads // a.num_query_groups
        k = k.repeat_interleave(heads_per_group, dim=1)  # head j reads group j // heads_per_group
        v = v.repeat_interleave(heads_per_group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(a.head_dim)  # [b, nh, s, s]
        future = torch.triu(torch.ones(s, s, dtype=torch.bool, device=x.device), 1)
        scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [b, nh, s, d]
        return self.wo(out.transpose(1, 2).reshape(b, s, a.num_heads * a.head_dim))


class MLP(nn.Module):
    def __init__(self, arch: ReferenceArch):
        super().__init__()
        self.activation = arch.activation
        h, f = arch.hidden_size, arch.ffn_hidden_size
        if arch.activation == "swiglu":
            self.w_gate = nn.Linear(h, f, bias=arch.bias)
            self.w_up = nn.Linear(h, f, bias=arch.bias)
        elif arch.activation == "gelu":
            self.w_in = nn.Linear(h, f, bias=arch.bias)
        else:
            raise ValueError(f"unknown activation {arch.activation!r}")
        self.w_out = nn.Linear(f, h, bias=arch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return self.w_out(F.silu(self.w_gate(x)) * self.w_up(x))
        return self.w_out(F.gelu(self.w_in(x)))  # exact erf GeLU


class Block(nn.Module):
    def __init__(self, arch: ReferenceArch):
        super().__init__()
        self.attn_norm = Norm(arch)
        self.attn = Attention(arch)
        self.mlp_norm = Norm(arch)
        self.mlp = MLP(arch)
        self.parallel_residual = arch.parallel_residual

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel_residual:
            return x + self.attn(self.attn_norm(x), position_ids) + self.mlp(self.mlp_norm(x))
        x = x + self.attn(self.attn_norm(x), position_ids)
        return x + self.mlp(self.mlp_norm(x))


class ReferenceModel(nn.Module):
    def __init__(self, arch: ReferenceArch):
        super().__init__()
        if arch.num_heads % arch.num_query_groups or arch.hidden_size % arch.num_heads:
            raise ValueError("hidden_size % num_heads and num_heads % num_query_groups must be 0")
        self.arch = arch
        self.tok_emb = nn.Parameter(torch.randn(arch.vocab_size, arch.hidden_size) * 0.02)
        self.pos_emb = (
            nn.Parameter(torch.randn(arch.max_positions, arch.hidden_size) * 0.02)
            if arch.position_embedding == "learned_absolute"
            else None
        )
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.final_norm = Norm(arch)
        self.lm_head = (
            None
            if arch.tied_embeddings
            else nn.Parameter(torch.randn(arch.vocab_size, arch.hidden_size) * 0.02)
        )

    @property
    def word_embedding_weight(self) -> torch.Tensor:
        """[V, h]"""
        return self.tok_emb

    def embed(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """tokens, position_ids: [b, L] -> [b, L, h] (word + learned position embedding)."""
        x = self.tok_emb[tokens]
        if self.pos_emb is not None:
            x = x + self.pos_emb[position_ids]
        return x

    def body(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x: [b, s, h], position_ids: [b, s] -> hidden states after the final norm [b, s, h].

        Attention is causal over slot order; positions enter only through RoPE (if any).
        """
        for block in self.blocks:
            x = block(x, position_ids)
        return self.final_norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [b, s, h] -> [b, s, V]."""
        weight = self.tok_emb if self.lm_head is None else self.lm_head
        return h @ weight.t()
