"""Activation bytes one pass keeps for backward, per pipeline stage and microbatch.

Counted tensor by tensor from what Megatron-Core 0.16 saves for autograd (storages, so a view
keeps its whole base alive), for the two kernel profiles of :class:`~.shapes.Precision`:

* ``local`` (Megatron's local spec, as this project runs on CPU and tests measure): norms save
  input and statistics (torch's RMSNorm on CPU, i.e. fp32 runs, also its normalised input: its
  composite form; on CUDA the fused RMSNorm kernel keeps input and rstd only, as measured on the
  fake GPU by ``tools/plan_run.py --measure``); every linear saves its input;
  the SDPA core attention (default) saves q, k, v (not GQA-expanded; K/V all-gathered under CP),
  its output, the fp32 log-sum-exp and, under CP, its [s, s*cp] mask as an additive float mask;
  the unfused one (Megatron's DotProductAttention) saves q and the (GQA-expanded) k, v for the two
  batched GEMMs, the s x s softmax output (fp32, plus its cast when activations are 16-bit) and
  the s x s causal mask; RoPE saves
  cos/sin per q and k (of the rotated channels only under partial rotary); SwiGLU (Megatron's fused function, bias_activation_fusion) saves fc1's output and
  fc2's input (3 x s*b*f; unfused it would also keep silu's output and the linear half plus its
  offset, 5 x s*b*f), GeLU its input and fc2's input.
* ``te`` (Transformer Engine on GPU): fused norm+linear saves input, normalised output and
  statistics; flash attention saves q, k, v (not expanded), its output and the softmax
  log-sum-exp (no s x s matrix); the fused MLP saves fc1's output and fc2's input. Under FP8
  the GEMM inputs are kept in FP8 (1 byte).

Recompute (Megatron semantics): ``selective`` checkpoints core attention, which then keeps only
its inputs q, k, v; ``full`` (uniform, one layer per checkpoint) keeps each layer's input. Both
add a transient working set during backward (one layer recomputed). No dropout (p = 0, as the
LLaMA/Pythia-style pretraining here is configured); dropout masks would add 1 byte per element.

Parallel residual (GPT-NeoX): both norms read the layer input, whose storage counts once.

Sizes: ``slots`` are the slots of one pass on this rank after the context-parallel split
(k*L/cp for a pass with k slots per token); sequence parallelism divides the tensors outside
attention/MLP by tp; heads and the MLP width are divided by tp.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_ponder.planning.shapes import Layout, ModelShape, Precision


@dataclass(frozen=True)
class ActivationContext:
    """The parts of a plan the per-tensor formulas need."""

    model: ModelShape
    precision: Precision
    layout: Layout

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def sp_div(self) -> int:
        """Tensors outside the tensor-parallel regions are sequence-sharded under SP."""
        return self.layout.tp if self.layout.sp else 1


def _norm_bytes(ctx: ActivationContext, slots: int, batch: int, followed_by_linear: bool) -> float:
    """A norm (and the saved input of the linear it feeds), on [slots, b, h]."""
    m, p = ctx.model, ctx.precision
    e = p.activation_bytes
    x = slots * batch * m.hidden_size / ctx.sp_div
    stats = slots * batch * 4 / ctx.sp_div * (1 if m.normalization == "RMSNorm" else 2)
    if p.kernels == "te":
        # TE LayerNormLinear: input, FP8/BF16 normalised output; a bare TENorm: input only.
        return x * e + stats + (x * p.linear_input_bytes if followed_by_linear else 0.0)
    # torch's RMSNorm: on CPU (fp32 runs) its composite form also keeps the normalised input; on
    # CUDA (16-bit runs) the fused kernel keeps only its input and rstd, as LayerNorm does.
    composite = m.normalization == "RMSNorm" and p.name == "fp32"
    saved_normalised = x * e if composite else 0.0
    return x * e + saved_normalised + stats + (x * e if followed_by_linear else 0.0)


def _attention_bytes(ctx: ActivationContext, slots: int, batch: int, recompute: str) -> float:
    """Self-attention from q/k/v to the input of the output projection (norm/qkv linear excluded)."""
    m, p, tp = ctx.model, ctx.precision, ctx.tp
    e = p.activation_bytes
    cp = ctx.layout.cp
    heads = m.num_attention_heads / tp
    q = slots * batch * m.num_attention_heads * m.kv_channels / tp * e
    kv = slots * batch * m.num_query_groups * m.kv_channels / tp * e
    proj_input = q  # [s, b, heads*d] context
    if p.kernels == "te":
        lse = 0.0 if recompute == "selective" else batch * heads * slots * 4
        fp8_copy = q / e * p.linear_input_bytes if p.linear_input_bytes != e else 0.0
        return q + 2 * kv + proj_input + fp8_copy + lse
    rope = m.position_embedding_type == "rope"
    qkv_storage = q + 2 * kv
    cos_sin = 4 * slots * m.rotary_channels * e if rope else 0.0  # cos, sin for q and for k (rotated part)
    keys = slots * cp  # local attention all-gathers K/V over context parallelism
    if recompute == "selective":
        # checkpoint keeps its inputs: q, k (rotated: new tensors), v (a view of the qkv output)
        saved = (q + kv if rope else 0.0) + qkv_storage
        return saved + cos_sin + proj_input
    if p.local_attention == "sdpa":
        # q, k after RoPE are new tensors, else views of the qkv output; under CP k and v are
        # the gathered copies (v otherwise a view of the qkv output).
        q_saved = q if rope else 0.0
        k_saved = kv * cp if cp > 1 else (kv if rope else 0.0)
        v_saved = kv * cp if cp > 1 else 0.0
        uses_qkv_view = not rope or cp == 1
        lse = batch * heads * slots * 4
        mask = slots * keys * e if cp > 1 else 0.0  # the boolean mask, as SDPA's additive float mask
        return (
            q_saved + k_saved + v_saved + (qkv_storage if uses_qkv_view else 0.0)
            + lse + mask + cos_sin + proj_input  # SDPA's output is the projection input's storage
        )
    grouped = m.num_attention_heads > m.num_query_groups
    q_saved = q if rope else 0.0
    expanded = q * cp  # k or v after repeat_interleave to every head (and the CP gather)
    k_saved = expanded if (grouped or cp > 1) else (kv if rope else 0.0)
    v_saved = expanded if (grouped or cp > 1) else 0.0
    uses_qkv_view = not rope or not (grouped or cp > 1)
    probs = batch * heads * slots * keys * (4 + (e if e != 4 else 0))  # fp32 softmax (+ its cast)
    mask = slots * keys  # bool
    return (
        q_saved + k_saved + v_saved + (qkv_storage if uses_qkv_view else 0.0)
        + probs + mask + cos_sin + proj_input
    )


def _mlp_bytes(ctx: ActivationContext, slots: int, batch: int) -> float:
    """MLP from fc1's output to fc2's input (fc1's input is counted with its norm)."""
    m, p = ctx.model, ctx.precision
    e = p.activation_bytes
    f = slots * batch * m.ffn_hidden_size / ctx.tp
    if p.kernels == "te":
        return (2 if m.gated_linear_unit else 1) * f * e + f * p.linear_input_bytes
    # SwiGLU through Megatron's fused function (the llama style's bias_activation_fusion): fc1's
    # output (2f) and fc2's input; GeLU: its input and fc2's input.
    return (3 if m.gated_linear_unit else 2) * f * e


def layer_bytes(ctx: ActivationContext, slots: int, batch: int, recompute: str) -> float:
    """Bytes one transformer layer keeps for backward over ``slots`` local slots."""
    if recompute == "full":
        return slots * batch * ctx.model.hidden_size / ctx.sp_div * ctx.precision.activation_bytes
    # Parallel residual (GPT-NeoX): both norms save the same layer input, stored once.
    shared_input = 0.0
    if ctx.model.parallel_residual:
        shared_input = slots * batch * ctx.model.hidden_size / ctx.sp_div * ctx.precision.activation_bytes
    return (
        _norm_bytes(ctx, slots, batch, followed_by_linear=True)
        + _attention_bytes(ctx, slots, batch, recompute)
        + _norm_bytes(ctx, slots, batch, followed_by_linear=True) - shared_input
        + _mlp_bytes(ctx, slots, batch)
    )


def recompute_working_bytes(ctx: ActivationContext, slots: int, batch: int, recompute: str) -> float:
    """Transient bytes while one checkpoint is recomputed in backward (0 without recompute)."""
    if recompute == "none":
        return 0.0
    return layer_bytes(ctx, slots, batch, "none") - layer_bytes(ctx, slots, batch, recompute)


def backward_temporaries_bytes(ctx: ActivationContext, slots: int, batch: int) -> float:
    """The largest transient of a layer's backward beyond what autograd saved (0 for ``te``).

    ``local`` kernels: without gradient-accumulation fusion (Transformer Engine's, or apex's
    ``fused_weight_gradient_mlp_cuda``) each weight gradient is materialised in the activation
    dtype before it is added to the fp32 main grad, so the largest weight of the rank (fc1 for
    LLaMA shapes) is briefly held twice; Megatron's unfused attention holds the gradients of the
    s x s probabilities (fp32) and scores at once. Whichever is larger (they do not overlap).
    Measured on the fake GPU (``tools/plan_run.py --measure``): 70B at TP=2 holds 0.48 GiB over
    the saved tensors at its peak, fc1's gradient is 0.44 GiB; 7B unfused at TP=8, L=4096:
    0.39 GiB, the s x s term 0.375 GiB. TE/flash attention accumulate in place / recompute tiles.
    """
    m, p, tp = ctx.model, ctx.precision, ctx.tp
    if p.kernels != "local":
        return 0.0
    e = p.activation_bytes
    h, d = m.hidden_size, m.kv_channels
    fc1 = h * m.ffn_hidden_size * (2 if m.gated_linear_unit else 1)
    weights = (h * (m.num_attention_heads + 2 * m.num_query_groups) * d, m.num_attention_heads * d * h, fc1,
               m.ffn_hidden_size * h)
    largest_weight_grad = max(weights) / tp * e
    scores_grad = 0.0
    if p.local_attention == "unfused":
        keys = slots * ctx.layout.cp
        scores_grad = batch * m.num_attention_heads / tp * slots * keys * (4 + e)
    return max(largest_weight_grad, scores_grad)


def rotary_table_bytes(ctx: ActivationContext, slots: int) -> float:
    """Full recompute checkpoints receive the pass's RoPE table [slots, 1, 1, d] as an input."""
    if ctx.model.position_embedding_type != "rope" or ctx.precision.kernels == "te":
        return 0.0
    return slots * ctx.model.rotary_channels * ctx.precision.activation_bytes


def embedding_bytes(ctx: ActivationContext, tokens: int, batch: int) -> float:
    """Embedding lookup: token ids (int64; a masked copy and its mask under TP) and positions."""
    ids = tokens * batch * (8 + 1 if ctx.tp > 1 else 8)
    positions = tokens * batch * 8 if ctx.model.position_embedding_type == "learned_absolute" else 0.0
    return ids + positions


def head_bytes(ctx: ActivationContext, slots: int, tokens: int, batch: int, kind: str) -> float:
    """Last stage after the layers: final norm, and what the pass does with its output.

    kind: ``hidden`` (latent initial/Jacobi pass: the states are sliced, nothing else saved),
    ``ponder`` (output layer + vocab-parallel softmax + p @ E) or ``final`` (output layer and
    Megatron's vocab-parallel cross-entropy). ``tokens`` = positions that get logits.
    """
    m, p, tp = ctx.model, ctx.precision, ctx.tp
    e = p.activation_bytes
    norm = _norm_bytes(ctx, slots, batch, followed_by_linear=False)
    if kind == "hidden":
        return norm
    # The output layer saves the final norm's output (a view of all ``slots`` for latent).
    output_input = slots * batch * m.hidden_size / ctx.sp_div * e
    vocab = tokens * batch * m.vocab_size / tp
    if kind == "ponder":
        if tp == 1:
            softmax = vocab * 4  # torch.softmax keeps its fp32 output
        else:
            # exp and the all-reduced row sum are kept; the fp32 probabilities themselves only when
            # p @ E reads them in fp32 (16-bit runs keep their cast instead; measured on the fake GPU).
            softmax = vocab * 4 + tokens * batch * 4 + (vocab * 4 if e == 4 else 0.0)
        cast = vocab * e if e != 4 else 0.0  # p cast to the embedding dtype for p @ E
        return norm + output_input + softmax + cast
    cross_entropy = vocab * 4 + tokens * batch * (1 + 8)  # fp32 exp(logits), target mask, target
    return norm + output_input + cross_entropy
