"""What the planner is asked about: model shape, method, parallel layout, precision and cluster.

Plain dataclasses (no Megatron objects), so a plan for 70B on 512 GPUs builds in microseconds.
``ModelShape`` carries the attribute names of Megatron's ``TransformerConfig`` that the FLOP model
(:mod:`megatron_ponder.training.flops`) reads, so the same formula serves logs and planner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from megatron_ponder.training.presets import PRESETS


@dataclass(frozen=True)
class ModelShape:
    """A GPT model as Megatron's local / TE layer builds it.

    ``vocab_size`` is the size the model is built with (after any padding).
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    num_query_groups: Optional[int] = None  # None: multi-head attention (= heads)
    gated_linear_unit: bool = False  # SwiGLU (fc1 is 2*ffn wide)
    normalization: str = "LayerNorm"  # or RMSNorm
    position_embedding_type: str = "learned_absolute"  # or rope
    add_bias_linear: bool = True
    tied_embeddings: bool = True
    max_position_embeddings: int = 2048  # learned positions only
    parallel_residual: bool = False  # GPT-NeoX: both norms read the layer input
    rotary_percent: float = 1.0  # fraction of each head's channels RoPE rotates (neox: 0.25)

    def __post_init__(self):
        if self.num_query_groups is None:
            object.__setattr__(self, "num_query_groups", self.num_attention_heads)
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_query_groups {self.num_query_groups}"
            )

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_channels(self) -> int:
        """Channels per head RoPE rotates (Megatron: int(kv_channels * rotary_percent))."""
        return int(self.kv_channels * self.rotary_percent)

    @classmethod
    def from_style(cls, style: str, vocab_size: int, max_position_embeddings: int = 2048, **sizes) -> ModelShape:
        """A shape of architecture ``style`` (llama / gpt2 / neox, :mod:`megatron_ponder.model.architectures`)."""
        from megatron_ponder.model.architectures import get_style

        chosen = get_style(style)
        fields = chosen.config_fields
        return cls(
            vocab_size=vocab_size,
            gated_linear_unit=fields.get("gated_linear_unit", False),
            normalization=fields.get("normalization", "LayerNorm"),
            position_embedding_type=chosen.position_embedding_type,
            add_bias_linear=fields.get("add_bias_linear", True),
            tied_embeddings=chosen.share_embeddings_and_output_weights,
            max_position_embeddings=max_position_embeddings,
            parallel_residual=chosen.parallel_residual,
            rotary_percent=chosen.rotary_percent,
            **sizes,
        )

    @classmethod
    def from_preset(cls, name: str, vocab_size: int = 50304, seq_length: Optional[int] = None) -> ModelShape:
        """A preset of :mod:`megatron_ponder.training.presets` with its architecture style."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        sizes = dict(PRESETS[name])
        style = sizes.pop("architecture")
        preset_length = sizes.pop("seq_length", 2048)
        return cls.from_style(style, vocab_size, seq_length or preset_length, **sizes)


@dataclass(frozen=True)
class Method:
    """Mode and its pass structure: none, ponder (S steps) or latent (N thoughts, J rounds).

    ``jacobi_rounds`` is (lo, hi) as in ``PonderConfig.jacobi_train_rounds``: memory is planned
    for hi (the worst step), FLOPs and time for the mean. ``ponder_grad_steps`` /
    ``jacobi_grad_rounds``: truncated backprop as in ``PonderConfig`` (None: all); the leading
    passes without a graph keep no activations and have no backward.
    """

    mode: str = "none"
    ponder_steps: int = 3
    ponder_accumulate: bool = True
    num_latent_thoughts: int = 1
    jacobi_rounds: tuple = (2, 3)
    ponder_grad_steps: Optional[int] = None
    jacobi_grad_rounds: Optional[int] = None

    def __post_init__(self):
        if self.mode not in ("none", "ponder", "latent"):
            raise ValueError(f"mode must be none, ponder or latent; got {self.mode!r}")
        lo, hi = self.jacobi_rounds
        if not 0 <= lo <= hi:
            raise ValueError(f"jacobi rounds range must be 0 <= lo <= hi; got {self.jacobi_rounds}")
        for name in ("ponder_grad_steps", "jacobi_grad_rounds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (all); got {value}")

    def describe(self) -> str:
        if self.mode == "ponder":
            truncated = "" if self.ponder_grad_steps is None else f" grad K={self.ponder_grad_steps}"
            return f"ponder S={self.ponder_steps}{truncated}"
        if self.mode == "latent":
            lo, hi = self.jacobi_rounds
            rounds = f"{lo}" if lo == hi else f"{{{lo}..{hi}}}"
            truncated = "" if self.jacobi_grad_rounds is None else f" grad K={self.jacobi_grad_rounds}"
            return f"latent N={self.num_latent_thoughts} J={rounds}{truncated}"
        return "none"


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a GPU keeps.

    ``name``: bf16 or fp8 (TE FP8 GEMMs; weights and activations otherwise bf16), or fp32 (CPU).
    ``kernels``: ``local`` = Megatron's local spec as this project runs it (norms save their
    normalised input; what the CPU tests measure), its core attention ``local_attention``:
    ``sdpa`` (torch's fused attention saves q, k, v, output and the log-sum-exp) or ``unfused``
    (Megatron's DotProductAttention: the s x s probabilities are saved); ``te`` = Transformer
    Engine spec on GPU (flash attention saves q, k, v, output and the softmax statistics, no
    s x s matrix; fused norm+linear), an assumption until the project's TE spec lands.
    """

    name: str = "bf16"
    kernels: str = "te"
    local_attention: str = "sdpa"

    def __post_init__(self):
        if self.name not in ("bf16", "fp8", "fp32"):
            raise ValueError(f"precision must be bf16, fp8 or fp32; got {self.name!r}")
        if self.kernels not in ("local", "te"):
            raise ValueError(f"kernels must be local or te; got {self.kernels!r}")
        if self.local_attention not in ("sdpa", "unfused"):
            raise ValueError(f"local_attention must be sdpa or unfused; got {self.local_attention!r}")

    @property
    def activation_bytes(self) -> int:
        return 4 if self.name == "fp32" else 2

    @property
    def linear_input_bytes(self) -> int:
        """TE saves FP8 copies of GEMM inputs for backward under FP8."""
        return 1 if (self.name == "fp8" and self.kernels == "te") else self.activation_bytes

    @property
    def param_bytes(self) -> int:
        return 4 if self.name == "fp32" else 2


@dataclass(frozen=True)
class Layout:
    """Parallel layout and batch split of one run (world = tp * pp * cp * dp)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    sequence_parallel: bool = True  # only meaningful with tp > 1
    recompute: str = "none"  # none | selective | full (Megatron: uniform, 1 layer per checkpoint)
    distributed_optimizer: bool = True
    micro_batch_size: int = 1
    num_microbatches: int = 1
    # --overlap-grad-reduce (+ --overlap-param-gather with the distributed optimizer): the DP
    # reduction runs during the earliest pass's backward on the last microbatch, the parameter
    # all-gather during the first pass's forward of the next step.
    overlap_dp: bool = True

    def __post_init__(self):
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(f"recompute must be none, selective or full; got {self.recompute!r}")
        for name in ("tp", "pp", "cp", "dp", "micro_batch_size", "num_microbatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def sp(self) -> bool:
        return self.sequence_parallel and self.tp > 1

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.num_microbatches * self.dp

    def describe(self) -> str:
        sp = "+SP" if self.sp else ""
        return (
            f"TP{self.tp}{sp} PP{self.pp} CP{self.cp} DP{self.dp} mb{self.micro_batch_size}x{self.num_microbatches}"
            f" rc={self.recompute}"
        )


@dataclass(frozen=True)
class Cluster:
    """GPUs and links. Bandwidths are per GPU, per direction, in GB/s (1e9 bytes)."""

    num_gpus: int
    gpus_per_node: int = 8
    memory_gib: float = 80.0
    peak_tflops_bf16: float = 989.0
    peak_tflops_fp8: float = 1979.0
    intra_node_gbps: float = 450.0
    inter_node_gbps: float = 50.0
    name: str = "H100 80GB SXM"

    def peak_flops(self, precision: Precision) -> float:
        """Dense peak FLOP/s per GPU for the GEMMs of ``precision``."""
        return 1e12 * (self.peak_tflops_fp8 if precision.name == "fp8" else self.peak_tflops_bf16)


def h100_cluster(num_gpus: int, **overrides) -> Cluster:
    """Assumed H100 SXM numbers: 989 dense BF16 TFLOP/s, 1979 FP8, NVLink 450 GB/s, IB 50 GB/s per GPU."""
    return replace(Cluster(num_gpus=num_gpus), **overrides)


def padded_vocab_size(vocab: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron-LM's padding: a multiple of divisible_by * tp."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab / multiple) * multiple)


@dataclass(frozen=True)
class RunSpec:
    """Everything a plan depends on except the layout."""

    model: ModelShape
    method: Method = field(default_factory=Method)
    seq_length: int = 2048
    global_batch_size: int = 512
    precision: Precision = field(default_factory=Precision)
