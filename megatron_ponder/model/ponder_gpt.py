"""PonderGPTModel: Megatron's GPTModel with the multi-pass forward of PonderLM / PonderLM-2.

The embedding, the transformer block (``M``: input embeddings -> hidden states after the final
norm) and the output layer are GPTModel's own modules; only ``forward`` changes:

* ``none``:   GPTModel.forward, untouched.
* ``ponder``, ``latent``: the passes of the step's plan (:mod:`megatron_ponder.model.passes`),
  run one after the other on this stage by :meth:`PonderGPTModel.run_plan`. The mixture of
  ponder feedback is dense, FP8 or top-K (:meth:`PonderGPTModel.ponder_mixture`).

Activations are [s, b, h] as everywhere in Megatron-Core. Gradients flow through every pass
(unless ``ponder_grad_steps`` / ``jacobi_grad_rounds`` truncate them, see ``Pass.builds_graph``).
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from megatron_ponder.config import PonderConfig
from megatron_ponder.model.adaptive_jacobi import residual_below
from megatron_ponder.model.feedback_embedding import (
    FEEDBACK_KEY,
    add_feedback_embedding,
    tie_feedback_embedding_state_dict,
)
from megatron_ponder.model.passes import (
    PassKind,
    PassPlan,
    SlotLayouts,
    carried_state,
    final_hidden,
    first_stage_input,
    jacobi_residual,
    pass_feedback,
    pass_range,
    plan_for_config,
    stack_residuals,
)
from megatron_ponder.model.specs import check_attention_mask_supported
from megatron_ponder.model.vocab_mixing import (
    probability_weighted_embedding,
    vocab_parallel_softmax,
    vocab_parallel_topk_mixture,
)
from megatron_ponder.sequence_layout import check_sequence_layout


class PonderGPTModel(GPTModel):
    """GPTModel whose forward runs the passes of ``config.ponder_mode``."""

    def __init__(self, config: PonderConfig, *args, **kwargs):
        if not isinstance(config, PonderConfig):
            raise TypeError("PonderGPTModel needs a PonderConfig (got a plain TransformerConfig)")
        super().__init__(config, *args, **kwargs)
        add_feedback_embedding(self)
        if config.fp8 and config.ponder_mode == "ponder" and config.ponder_fp8_mixing:
            # The mixing weight's FP8 copy, refreshed by Megatron's first-microbatch signal like
            # TE's own layers (a submodule, so set_is_first_microbatch finds it). Imports TE.
            from megatron_ponder.model.fp8_mixing import FP8WeightCache

            self.fp8_mixing_weight_cache = FP8WeightCache()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        decoder_input: Tensor = None,
        labels: Tensor = None,
        inference_context=None,
        packed_seq_params=None,
        extra_block_kwargs: dict = None,
        runtime_gather_output: Optional[bool] = None,
        *,
        inference_params=None,
        loss_mask: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
        num_jacobi_rounds: Optional[int] = None,
        return_jacobi_residuals: bool = False,
        jacobi_tol: float = 0.0,
        **newer_gpt_kwargs,
    ):
        """Per-token loss [b, L] when ``labels`` [b, L] is given, else logits [b, L, V(/tp)].

        Args:
            input_ids: [b, L] token ids.
            position_ids: [b, L] token positions (thought slots reuse their token's position).
            attention_mask: token-level mask [b|1, 1, L, L], True = masked, or None (causal).
            num_jacobi_rounds: latent mode: J of this step (the training step passes
                ``config.jacobi_rounds_for_iteration(iteration)``); None: ``jacobi_eval_rounds``.
            return_jacobi_residuals: also return the Jacobi residuals of this forward, a
                detached fp32 tensor [J] (empty outside latent mode): ``(output, residuals)``.
            jacobi_tol: latent mode, eval mode only: stop the rounds once a round's residual over
                the microbatch is below it (at most J rounds; the residuals then number the rounds
                run). 0: the J rounds (:mod:`megatron_ponder.model.adaptive_jacobi`).
            newer_gpt_kwargs: GPTModel.forward arguments of newer megatron-core releases (0.18:
                ``output_processor``, ``output_processor_context``), passed on in mode ``none``.
        """
        mode = self.config.ponder_mode
        check_attention_mask_supported(self.config, attention_mask)
        if self.config.sequence_parallel and self.pre_process:
            # Megatron's scatter would fail deep inside with a shape error; say what is wrong.
            check_sequence_layout(
                input_ids.size(1), self.config.tensor_model_parallel_size, True, 1
            )
        if mode == "none":
            rope_at = self.rotary_at_positions(position_ids, packed_seq_params is None and
                                               inference_context is None and inference_params is None)
            with rope_at:
                output = super().forward(
                    input_ids,
                    position_ids,
                    attention_mask,
                    decoder_input=decoder_input,
                    labels=labels,
                    inference_context=inference_context,
                    packed_seq_params=packed_seq_params,
                    extra_block_kwargs=extra_block_kwargs,
                    runtime_gather_output=runtime_gather_output,
                    inference_params=inference_params,
                    loss_mask=loss_mask,
                    padding_mask=padding_mask,
                    **newer_gpt_kwargs,
                )
            return (output, stack_residuals([], output.device)) if return_jacobi_residuals else output
        unsupported = {
            "decoder_input": decoder_input,
            "inference_context": inference_context or inference_params,
            "packed_seq_params": packed_seq_params,
            "extra_block_kwargs": extra_block_kwargs,
            **newer_gpt_kwargs,
        }
        for name, value in unsupported.items():
            if value is not None:
                raise NotImplementedError(f"{name} is not supported in ponder_mode={mode!r}")
        if not (self.pre_process and self.post_process):
            raise RuntimeError(
                f"ponder_mode={mode!r} under pipeline parallelism runs pass by pass around the "
                "pipeline ring: drive it with megatron_ponder.parallel.looped_pipeline, not forward()"
            )
        if jacobi_tol > 0 and self.training:
            raise ValueError(f"jacobi_tol={jacobi_tol} stops the Jacobi rounds on a host read of the residual: "
                             "evaluation only (model.eval()), never in a training step")
        rounds = self.config.jacobi_eval_rounds if num_jacobi_rounds is None else num_jacobi_rounds
        logits, residuals = self.run_plan(
            plan_for_config(self.config, rounds), input_ids, position_ids, attention_mask,
            runtime_gather_output, jacobi_tol=jacobi_tol,
        )
        if labels is None:
            output = logits.transpose(0, 1).contiguous()  # [L, b, V] -> [b, L, V]
        else:
            output = self.compute_language_model_loss(labels, logits)
        return (output, residuals) if return_jacobi_residuals else output

    def run_plan(
        self,
        plan: PassPlan,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        runtime_gather_output: Optional[bool] = None,
        jacobi_tol: float = 0.0,
    ) -> Tuple[Tensor, Tensor]:
        """Every pass of ``plan`` on this (whole-model) stage: (logits [L, b, V/tp], residuals [J]).

        ``jacobi_tol`` > 0 (evaluation): the Jacobi rounds after the first one whose residual is
        below it are skipped, so the residuals number the rounds run (``model/adaptive_jacobi.py``).

        The fed-back state goes from pass to pass as a tensor (see ``model/passes.py``); the
        token embeddings and the slot layouts are built once for all passes.
        """
        token_inputs = self.input_embeddings(input_ids, position_ids)  # [L, b, h]
        layouts = SlotLayouts(position_ids, attention_mask, self.rotary_for_positions)
        state: Optional[Tensor] = None
        residuals: List[Tensor] = []
        converged = False
        for p in plan:
            if converged and p.kind is PassKind.JACOBI_ROUND:
                continue  # adaptive rounds: the thoughts stopped moving, on to the final pass
            # Truncated backprop (--ponder-grad-steps / --jacobi-grad-rounds): a leading pass
            # without a graph keeps no activations; its state reaches the next pass detached.
            with pass_range(p, plan), torch.set_grad_enabled(torch.is_grad_enabled() and p.builds_graph):
                output = self.transformer_pass(
                    first_stage_input(p, token_inputs, state), *layouts(p.slots_per_token)
                )
                if p.kind is PassKind.FINAL:
                    return self.output_logits(final_hidden(p, output), runtime_gather_output), stack_residuals(residuals, output.device)
                feedback = pass_feedback(p, output, carried_state(p, state), self)
            if p.kind is PassKind.JACOBI_ROUND:
                residuals.append(jacobi_residual(state, feedback))
                converged = jacobi_tol > 0 and residual_below(
                    state, feedback, jacobi_tol, (self.pg_collection.tp, self.pg_collection.cp))
            state = feedback
        raise ValueError("a pass plan ends with its FINAL pass")

    # ------------------------------------------------------------------ building blocks
    def input_embeddings(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """E(x) = s * embedding(x, pos): [b, L] -> [L, b, h] ([L/tp, b, h] under SP)."""
        embeddings = self.embedding(input_ids=input_ids, position_ids=position_ids)
        scale = self.config.input_embedding_scale
        return embeddings if scale == 1.0 else embeddings * scale

    @contextlib.contextmanager
    def rotary_at_positions(self, position_ids: Optional[Tensor], applies: bool = True):
        """Mode ``none``: GPTModel's RoPE at ``position_ids`` for the duration of the block.

        GPTModel rotates by slot index (0..s-1) and reads ``position_ids`` only for learned
        position embeddings; with positions that restart at each document
        (``--reset-position-ids``) RoPE must restart too, as in the multi-pass modes. The table
        is :meth:`rotary_for_positions`' (for plain positions the same values as GPTModel's own).
        ``applies`` False (packed sequences, inference) leaves GPTModel's RoPE alone.
        """
        if not applies or position_ids is None or self.position_embedding_type != "rope":
            yield
            return
        rotary = self.rotary_for_positions(position_ids)
        self.rotary_pos_emb.forward = lambda *args, **kwargs: rotary  # GPTModel's one call per forward
        try:
            yield
        finally:
            del self.rotary_pos_emb.forward

    def rotary_for_positions(self, position_ids: Tensor) -> Optional[Tensor]:
        """RoPE table for explicit (possibly repeated) positions, or None without RoPE.

        No host synchronisation: the table covers the model's ``max_sequence_length`` (slot
        positions are token positions, so they stay below it) and is gathered per sample, whatever
        the positions are. With ``apply_rope_fusion`` the table is the first sample's: TE's fused
        RoPE kernel takes one table per batch ([s, 1, 1, d]), and the samples of a batch share
        their positions (the data layer gives every sample 0..L-1; with ``--reset-position-ids``
        and several samples per microbatch the run turns the fusion off:
        ``training.fusions.rope_fusion_blocked_reason``).

        Args:
            position_ids: [b, s] positions of the s slots.

        Returns:
            [s, b, 1, d], or [s, 1, 1, d] with ``apply_rope_fusion``.
        """
        if self.position_embedding_type != "rope":
            return None
        table = self.rotary_pos_emb.get_emb(self.max_sequence_length)  # [P, 1, 1, d]
        if self.config.apply_rope_fusion:
            return table[position_ids[0]]
        return table[position_ids.t()].squeeze(2)  # [s, b, 1, 1, d] -> [s, b, 1, d]

    def transformer_pass(
        self, hidden: Tensor, attention_mask: Optional[Tensor], rotary: Optional[Tensor]
    ) -> Tensor:
        """M (this stage's layers): [s, b, h] -> [s, b, h], after the final norm on the last stage.

        On a pipeline stage without the embedding, Megatron's block reads its input from
        ``set_input_tensor``; we route ``hidden`` there so every stage is called alike.
        With ``config.fp8`` the block enters Megatron's FP8 context
        (``megatron.core.fp8_utils.get_fp8_context``) around its layers on every call, so every
        pass of both methods runs its transformer GEMMs in FP8.
        """
        # A view gives the pass's input its own autograd node, so the gradients of the first
        # layer's two consumers (norm and residual) are summed before they meet the input's
        # other uses (ponder: cur_{k+1} = cur_k + mix). Activation recompute sums them inside
        # its checkpoint too; without this node fp32 additions would run in another order and
        # recompute would no longer give bit-identical gradients.
        hidden = hidden.view_as(hidden)
        if not self.decoder.pre_process:
            self.decoder.set_input_tensor(hidden)
        return self.decoder(hidden_states=hidden, attention_mask=attention_mask, rotary_pos_emb=rotary)

    def output_logits(self, hidden: Tensor, runtime_gather_output: Optional[bool] = None) -> Tensor:
        """W_out h: [s(/tp), b, h] -> [s, b, V/tp] (vocab-parallel unless gathered)."""
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        logits, _ = self.output_layer(hidden, weight=weight, runtime_gather_output=runtime_gather_output)
        return logits

    def mixing_embedding_weight(self) -> Tensor:
        """The word-embedding rows [V/tp, h] this stage mixes with (ponder feedback).

        The stage that has the output layer does the feedback. With tied embeddings that stage
        holds the embedding table itself (Megatron keeps a synchronised copy on the last
        pipeline stage); untied models under pipeline parallelism keep a copy for this purpose
        (:mod:`megatron_ponder.model.feedback_embedding`).
        """
        if self.pre_process:
            return self.embedding.word_embeddings.weight
        if self.share_embeddings_and_output_weights:
            return self.shared_embedding_or_output_weight()
        return getattr(self, FEEDBACK_KEY)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata: Optional[dict] = None):
        """GPTModel's sharded state dict; the ponder feedback copy of E is a replica of E."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        tie_feedback_embedding_state_dict(self, state, prefix, metadata)
        return state

    def ponder_mixture(self, hidden: Tensor) -> Tensor:
        """s * softmax(W_out h) @ E: [s(/tp), b, h] final-norm output -> [s(/tp), b, h] mixture.

        Dense over the whole vocabulary (its GEMM in FP8 when ``config.fp8`` and
        ``config.ponder_fp8_mixing``), or over the ``config.ponder_topk`` most probable tokens.
        """
        config = self.config
        tp_group = self.pg_collection.tp
        weight = self.mixing_embedding_weight()
        # Vocab-parallel logits [s, b, V/tp] whatever the model's output gathering: the mixture
        # pairs them with this rank's V/tp embedding rows.
        logits = self.output_logits(hidden, runtime_gather_output=False)
        vocab_start = tp_group.rank() * weight.size(0)
        if config.ponder_topk is not None:
            mixture = vocab_parallel_topk_mixture(
                logits, weight, config.ponder_topk, tp_group, config.sequence_parallel,
                vocab_start_index=vocab_start, valid_vocab_size=config.ponder_vocab_size,
            )
        else:
            probs = vocab_parallel_softmax(
                logits, tp_group, vocab_start_index=vocab_start, valid_vocab_size=config.ponder_vocab_size
            )
            fp8_format = config.fp8 if config.ponder_fp8_mixing else None
            mixture = probability_weighted_embedding(
                probs, weight, tp_group, config.sequence_parallel, fp8_format=fp8_format,
                fp8_weight_cache=getattr(self, "fp8_mixing_weight_cache", None),
            )
        scale = config.input_embedding_scale
        return mixture if scale == 1.0 else mixture * scale

