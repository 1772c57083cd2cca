"""PonderGPTModel: Megatron's GPTModel with the multi-pass forward of PonderLM / PonderLM-2.

The embedding, the transformer block (``M``: input embeddings -> hidden states after the final
norm) and the output layer are GPTModel's own modules; only ``forward`` changes:

* ``none``:   GPTModel.forward, untouched.
* ``ponder``: e_0 = s*E(x); S times: cur <- cur (or e_0) + s * softmax(W_out M(cur)) @ E.weight;
              loss on W_out M(cur). The mixture is dense, FP8 or top-K (``ponder_mixture``).
* ``latent``: N initial passes build the thoughts, J Jacobi rounds refine them over the
              interleaved sequence, a final pass gives logits at each token's last thought.

Activations are [s, b, h] as everywhere in Megatron-Core. Gradients flow through every pass.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from megatron_ponder.config import PonderConfig
from megatron_ponder.model.interleave import (
    interleave_attention_mask,
    interleave_position_ids,
    interleave_thoughts,
    jacobi_update,
    last_slot_of_each_group,
)
from megatron_ponder.model.vocab_mixing import (
    probability_weighted_embedding,
    vocab_parallel_softmax,
    vocab_parallel_topk_mixture,
)
from megatron_ponder.parallel.context_parallel import check_sequence_layout
from megatron_ponder.parallel.feedback_embedding import (
    FEEDBACK_KEY,
    add_feedback_embedding,
    tie_feedback_embedding_state_dict,
)


class PonderGPTModel(GPTModel):
    """GPTModel whose forward runs the passes of ``config.ponder_mode``.

    Extra state:
        iteration: the training iteration, set by the training loop; in latent mode it selects J
            via ``config.jacobi_rounds_for_iteration`` (identical on every rank).
        last_jacobi_residuals: after a latent forward, one detached scalar per Jacobi round,
            the mean squared change of the thoughts ||z^j - z^(j-1)||^2 / numel (this rank's
            slots), i.e. the convergence curve of the fixed-point iteration.
    """

    def __init__(self, config: PonderConfig, *args, **kwargs):
        if not isinstance(config, PonderConfig):
            raise TypeError("PonderGPTModel needs a PonderConfig (got a plain TransformerConfig)")
        super().__init__(config, *args, **kwargs)
        add_feedback_embedding(self)
        self.iteration = 0
        self.last_jacobi_residuals: List[Tensor] = []

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
        **newer_gpt_kwargs,
    ) -> Tensor:
        """Per-token loss [b, L] when ``labels`` [b, L] is given, else logits [b, L, V(/tp)].

        Args:
            input_ids: [b, L] token ids.
            position_ids: [b, L] token positions (thought slots reuse their token's position).
            attention_mask: token-level mask [b|1, 1, L, L], True = masked, or None (causal).
            num_jacobi_rounds: latent mode only; overrides J for this call.
            newer_gpt_kwargs: GPTModel.forward arguments of newer megatron-core releases (0.18:
                ``output_processor``, ``output_processor_context``), passed on in mode ``none``.
        """
        mode = self.config.ponder_mode
        if self.config.sequence_parallel and self.pre_process:
            # Megatron's scatter would fail deep inside with a shape error; say what is wrong.
            check_sequence_layout(
                input_ids.size(1), self.config.tensor_model_parallel_size, True, 1
            )
        if mode == "none":
            return super().forward(
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
        if mode == "ponder":
            logits = self._ponder_logits(input_ids, position_ids, attention_mask, runtime_gather_output)
        else:
            logits = self._latent_logits(
                input_ids, position_ids, attention_mask, runtime_gather_output, num_jacobi_rounds
            )
        if labels is None:
            return logits.transpose(0, 1).contiguous()  # [L, b, V] -> [b, L, V]
        return self.compute_language_model_loss(labels, logits)

    # ------------------------------------------------------------------ building blocks
    def input_embeddings(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """E(x) = s * embedding(x, pos): [b, L] -> [L, b, h] ([L/tp, b, h] under SP)."""
        embeddings = self.embedding(input_ids=input_ids, position_ids=position_ids)
        scale = self.config.input_embedding_scale
        return embeddings if scale == 1.0 else embeddings * scale

    def rotary_for_positions(self, position_ids: Tensor) -> Optional[Tensor]:
        """RoPE table for explicit (possibly repeated) positions, or None without RoPE.

        Args:
            position_ids: [b, s] positions of the s slots.

        Returns:
            [s, 1, 1, d] when every sequence of the batch has the same positions, else [s, b, 1, d].
        """
        if self.position_embedding_type != "rope":
            return None
        table = self.rotary_pos_emb.get_emb(int(position_ids.max()) + 1)  # [P, 1, 1, d]
        if bool((position_ids == position_ids[:1]).all()):
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
        (:mod:`megatron_ponder.parallel.feedback_embedding`).
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
                probs, weight, tp_group, config.sequence_parallel, fp8_format=fp8_format
            )
        scale = config.input_embedding_scale
        return mixture if scale == 1.0 else mixture * scale

    # ------------------------------------------------------------------ ponder (PonderLM)
    def _ponder_logits(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        runtime_gather_output: Optional[bool],
    ) -> Tensor:
        """S feedback passes then the final pass; returns final logits [L, b, V/tp]."""
        config = self.config
        first_input = self.input_embeddings(input_ids, position_ids)
        rotary = self.rotary_for_positions(position_ids)
        current = first_input
        for _ in range(config.ponder_steps):
            mixture = self.ponder_mixture(self.transformer_pass(current, attention_mask, rotary))
            current = (current if config.ponder_accumulate else first_input) + mixture
        hidden = self.transformer_pass(current, attention_mask, rotary)
        return self.output_logits(hidden, runtime_gather_output)

    # ------------------------------------------------------------------ latent (PonderLM-2)
    def jacobi_rounds(self, override: Optional[int] = None) -> int:
        """J for this forward: the override, else the per-iteration draw (train) or the eval J."""
        if override is not None:
            return override
        if self.training:
            return self.config.jacobi_rounds_for_iteration(self.iteration)
        return self.config.jacobi_eval_rounds

    def _latent_logits(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Optional[Tensor],
        runtime_gather_output: Optional[bool],
        num_jacobi_rounds: Optional[int],
    ) -> Tensor:
        """Initial thoughts, J Jacobi rounds, final pass; logits at last thoughts [L, b, V/tp]."""
        num_thoughts = self.config.num_latent_thoughts
        rounds = self.jacobi_rounds(num_jacobi_rounds)
        token_inputs = self.input_embeddings(input_ids, position_ids)  # [L, b, h]

        def pass_over(thoughts: Tensor) -> Tensor:
            """One transformer pass over tokens + their k thoughts: [L, k, b, h] -> [(k+1)L, b, h]."""
            slots = thoughts.size(1) + 1
            positions = interleave_position_ids(position_ids, slots)
            return self.transformer_pass(
                interleave_thoughts(token_inputs, thoughts),
                interleave_attention_mask(attention_mask, slots),
                self.rotary_for_positions(positions),
            )

        # Initial thoughts: thought k of every token is the output of the last slot of its group
        # in a pass over the slots present so far (for N=1: one vanilla pass, z_i = H_i).
        thoughts = token_inputs.new_empty(token_inputs.size(0), 0, *token_inputs.shape[1:])
        for k in range(1, num_thoughts + 1):
            new_thought = last_slot_of_each_group(pass_over(thoughts), k)
            thoughts = torch.cat([thoughts, new_thought.unsqueeze(1)], dim=1)

        residuals = []
        for _ in range(rounds):
            updated = jacobi_update(pass_over(thoughts), num_thoughts)
            residuals.append((updated.detach() - thoughts.detach()).float().pow(2).mean())
            thoughts = updated
        self.last_jacobi_residuals = residuals

        last_thoughts = last_slot_of_each_group(pass_over(thoughts), num_thoughts + 1)  # [L, b, h]
        return self.output_logits(last_thoughts, runtime_gather_output)
