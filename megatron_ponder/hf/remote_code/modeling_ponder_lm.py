"""PonderLMForCausalLM: PonderLM / PonderLM-2 around a stock Hugging Face causal LM.

Standalone (imports only torch and transformers): copied into exported model folders and loaded
with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.

The backbone is a stock ``*ForCausalLM`` (Llama, GPT-NeoX, GPT-2, ...) built from
``config.backbone_config``; its weights are ``backbone.<stock name>``. We never re-implement a
layer: every pass calls the stock decoder with ``inputs_embeds``, ``position_ids``, a 2D attention
mask and (when generating) a ``transformers`` Cache. The method is the one of the Megatron model
(``megatron_ponder.model.ponder_gpt.PonderGPTModel``, equations in megatron_ponder's docs/methods.md):

* input embedding ``E(x) = s * embedding(x, pos)`` (GPT-2 style: word + learned position
  embedding, both scaled). Only token inputs carry the learned position embedding; thought slots
  and ponder inputs after the first pass enter the transformer as they are.
* ``ponder``: S feedback passes ``cur <- cur (or e_0) + s * softmax(W_out M(cur))[:V'] @ E[:V']``
  (V' = ``ponder_vocab_size``), then the final pass gives the logits.
* ``latent``: interleaved slots ``[x_1, z_1^1..z_1^N, x_2, ...]`` sharing their token's position
  id, attention causal over slot order; N initial passes (pass k over the k slots present so
  far sets z^1..z^k to the outputs of slots 0..k-1 of each group: the papers' rule); J Jacobi
  rounds (every thought <- output of the slot before it); final pass, logits at the last thought
  slot of every token.

Scoring (``forward``) computes the thoughts with J Jacobi rounds (as in training/evaluation).
KV-cached decoding (``generate``) fills the prompt either the same way (``prefill="jacobi"``, the
default: the papers' decoder) or slot by slot (``prefill="sequential"``: the sequential definition
``z_i = H(x_<=i, z_<i)``), and builds every new token's thoughts slot by slot. The two agree exactly
once J >= N*L (every round fixes at least one more slot of the causal chain);
``generate(use_cache=False)`` uses the scoring forward with J = N*L and is therefore the uncached
reference of the sequential prefill.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_ponder_lm import PonderLMConfig


@functools.lru_cache(maxsize=None)
def _cache_argument(decoder_class: type) -> str:
    """The decoder's KV-cache argument: ``cache`` from transformers 5.24 on, ``past_key_values``
    before it (5.24 still takes the old name, with a FutureWarning)."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


# generate() arguments that lm-eval and other GenerationMixin callers pass and that need no work.
_IGNORED_GENERATE_KWARGS = {"num_beams": 1, "num_return_sequences": 1, "output_scores": False,
                            "return_dict_in_generate": False, "synced_gpus": False}


class PonderLMForCausalLM(PreTrainedModel):
    """A stock causal LM run with the passes of PonderLM (``ponder``) or PonderLM-2 (``latent``).

    Shapes: b batch, L tokens, h hidden size, V vocabulary (the backbone's, padding included).
    """

    config_class = PonderLMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: PonderLMConfig):
        super().__init__(config)
        self.backbone = AutoModelForCausalLM.from_config(config.backbone())
        self.post_init()

    def _init_weights(self, module):
        # Fresh (non-loaded) weights follow the backbone's own init scheme.
        self.backbone._init_weights(module)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()

    # ------------------------------------------------------------------ building blocks
    @property
    def _decoder(self):
        """The stock decoder: input embeddings -> hidden states after the final norm."""
        return self.backbone.base_model

    @property
    def _learned_positions(self) -> torch.nn.Embedding | None:
        """GPT-2 style learned absolute position embedding (``wpe``), or None (rotary models)."""
        return getattr(self._decoder, "wpe", None)

    def embed_tokens(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """E(x) = s * (word embedding [+ learned position embedding]): [b, L] -> [b, L, h]."""
        embeddings = self.get_input_embeddings()(input_ids)
        if self._learned_positions is not None:
            embeddings = embeddings + self._learned_positions(position_ids)
        scale = self.config.input_embedding_scale
        return embeddings if scale == 1.0 else embeddings * scale

    def transformer_pass(
        self,
        inputs: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        cache: DynamicCache | None = None,
    ) -> Tensor:
        """M: [b, s, h] inputs -> [b, s, h] hidden states after the final norm.

        Args:
            inputs: the slots' input vectors (token embeddings already include their positions).
            position_ids: [b, s] (latent slots repeat their token's id).
            attention_mask: [b, past + s], 1 = attend, 0 = padding. Always passed explicitly:
                without it transformers reads repeated position ids as packed sequences.
            cache: the pass's KV cache (appended to in place), or None.
        """
        silence_positions = None
        if self._learned_positions is not None:
            # The stock GPT-2 decoder adds wpe(position_ids) to whatever it is given; Megatron adds
            # it once, inside E(x), and never to fed-back vectors. For this call wpe returns zeros,
            # so every slot enters the layers exactly as in Megatron (in any dtype).
            silence_positions = self._learned_positions.register_forward_hook(
                lambda module, args, output: torch.zeros_like(output)
            )
        try:
            output = self._decoder(
                inputs_embeds=inputs,
                position_ids=position_ids,
                attention_mask=attention_mask,
                use_cache=cache is not None,
                **{_cache_argument(type(self._decoder)): cache},
            )
        finally:
            if silence_positions is not None:
                silence_positions.remove()
        return output.last_hidden_state

    def output_logits(self, hidden: Tensor) -> Tensor:
        """W_out h: [b, s, h] -> [b, s, V]."""
        return self.get_output_embeddings()(hidden)

    def ponder_mixture(self, hidden: Tensor) -> Tensor:
        """s * softmax(W_out h) @ E over the first ``ponder_vocab_size`` rows: [b, s, h] -> [b, s, h].

        With ``ponder_topk`` = K: softmax over the K largest logits only, and the weighted sum of
        those K rows (``sum_j p_j E[id_j]``), as the Megatron model's top-K mixing.
        """
        weight = self.get_input_embeddings().weight
        valid = self.config.ponder_vocab_size or weight.size(0)
        logits = self.output_logits(hidden)[..., :valid].float()  # [b, s, V']
        if self.config.ponder_topk is None:
            mixture = torch.softmax(logits, dim=-1).to(weight.dtype) @ weight[:valid]
        else:
            values, ids = logits.topk(min(self.config.ponder_topk, valid), dim=-1)  # [b, s, K]
            probs = torch.softmax(values, dim=-1).to(weight.dtype)
            mixture = torch.einsum("bsk,bskh->bsh", probs, F.embedding(ids, weight))
        scale = self.config.input_embedding_scale
        return mixture if scale == 1.0 else mixture * scale

    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.backbone.config)

    # ------------------------------------------------------------------ scoring forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        num_jacobi_rounds: int | None = None,
        return_dict: bool | None = None,
        jacobi_tol: float | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits [b, L, V] for every token (latent: read at the token's last thought slot).

        Args:
            input_ids: [b, L].
            attention_mask: [b, L], 1 = token, 0 = padding (default: all ones).
            position_ids: [b, L] (default: running count of the unmasked tokens, i.e. 0..L-1).
            labels: [b, L] aligned with ``input_ids`` (shifted inside, -100 = ignored): adds the
                mean next-token cross-entropy as ``loss``.
            num_jacobi_rounds: latent mode: J for this call (default ``config.jacobi_eval_rounds``).
            jacobi_tol: latent mode: adaptive rounds, stop once a round's residual
                ||z^j - z^(j-1)||^2 / numel over the batch is below it (at most J rounds; one host
                read per round); the rounds run are left in ``self.jacobi_rounds_used``. None or 0
                (default): the J rounds.
        """
        # Flags HF callers pass by habit; this forward returns logits (and loss) only.
        harmless = ("use_cache", "output_attentions", "output_hidden_states")
        unsupported = [k for k, v in kwargs.items() if v is not None and v is not False and k not in harmless]
        if unsupported:
            raise ValueError(f"PonderLMForCausalLM.forward does not take {', '.join(unsupported)}")
        attention_mask, position_ids = self._mask_and_positions(input_ids, attention_mask, position_ids)
        token_inputs = self.embed_tokens(input_ids, position_ids)
        if self.config.ponder_mode == "ponder":
            logits = self._ponder_logits(token_inputs, position_ids, attention_mask)
        else:
            rounds = self.config.jacobi_eval_rounds if num_jacobi_rounds is None else num_jacobi_rounds
            logits = self._latent_logits(token_inputs, position_ids, attention_mask, rounds, jacobi_tol)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @staticmethod
    def _mask_and_positions(input_ids, attention_mask, position_ids):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return attention_mask, position_ids

    def _ponder_logits(self, token_inputs: Tensor, position_ids: Tensor, attention_mask: Tensor,
                       caches: list[DynamicCache] | None = None) -> Tensor:
        """S feedback passes and the final pass (pass k uses ``caches[k]`` if given) -> [b, L, V]."""
        config = self.config
        caches = caches or [None] * (config.ponder_steps + 1)
        current = token_inputs
        for step in range(config.ponder_steps):
            hidden = self.transformer_pass(current, position_ids, attention_mask, caches[step])
            current = (current if config.ponder_accumulate else token_inputs) + self.ponder_mixture(hidden)
        hidden = self.transformer_pass(current, position_ids, attention_mask, caches[-1])
        return self.output_logits(hidden)

    def _latent_pass(self, token_inputs: Tensor, thoughts: list[Tensor], position_ids: Tensor,
                     attention_mask: Tensor, cache: DynamicCache | None = None) -> Tensor:
        """One pass over the tokens and their k-1 thoughts (k slots per token) -> outputs [b, L, k, h].

        Args:
            token_inputs: E(x) [b, L, h]; thoughts: k-1 tensors [b, L, h] (thoughts[j-1] = z^j).
            position_ids, attention_mask: [b, L] token-level (expanded to the k slots here).
            cache: filled with this pass's keys/values (the Jacobi prefill's final pass), or None.
        """
        slots = len(thoughts) + 1
        sequence = torch.stack([token_inputs, *thoughts], dim=2).flatten(1, 2)  # [b, kL, h]
        hidden = self.transformer_pass(
            sequence,
            position_ids.repeat_interleave(slots, dim=1),
            attention_mask.repeat_interleave(slots, dim=1),
            cache,
        )
        return hidden.unflatten(1, (token_inputs.size(1), slots))

    def _latent_thoughts(self, token_inputs: Tensor, position_ids: Tensor, attention_mask: Tensor,
                         rounds: int, jacobi_tol: float | None = None) -> list[Tensor]:
        """The N initial passes and ``rounds`` Jacobi rounds -> thoughts, N tensors [b, L, h].

        ``jacobi_tol`` > 0: stop after the first round whose residual is below it (adaptive
        rounds, as the Megatron model's ``--jacobi-eval-tol``). ``self.jacobi_rounds_used``: the
        rounds run.
        """
        thoughts: list[Tensor] = []  # thoughts[k-1] = z^k
        for _ in range(self.config.num_latent_thoughts):
            # The papers' rule: the pass over the k slots so far sets every thought, z^1..z^k <-
            # outputs of slots 0..k-1 (the old ones refreshed as in a Jacobi round, z^k new).
            thoughts = list(self._latent_pass(token_inputs, thoughts, position_ids, attention_mask).unbind(2))
        self.jacobi_rounds_used = rounds
        for done in range(1, rounds + 1):
            outputs = self._latent_pass(token_inputs, thoughts, position_ids, attention_mask)  # [b, L, N+1, h]
            previous, thoughts = thoughts, list(outputs[:, :, :-1].unbind(2))  # z^k <- H[slot before it]
            if jacobi_tol and _residual(previous, thoughts) < jacobi_tol:
                self.jacobi_rounds_used = done
                break
        return thoughts

    def _latent_logits(
        self, token_inputs: Tensor, position_ids: Tensor, attention_mask: Tensor, rounds: int,
        jacobi_tol: float | None = None,
    ) -> Tensor:
        """Initial thoughts, ``rounds`` Jacobi rounds (fewer with ``jacobi_tol``), final pass -> logits [b, L, V]."""
        thoughts = self._latent_thoughts(token_inputs, position_ids, attention_mask, rounds, jacobi_tol)
        outputs = self._latent_pass(token_inputs, thoughts, position_ids, attention_mask)  # [b, L, N+1, h]
        return self.output_logits(outputs[:, :, -1])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def _check_prompt(self, input_ids: Tensor) -> None:
        """Prompts the backbone cannot embed fail here with a plain message, not deep in a layer
        (an empty prompt: a reshape error; an id outside the vocabulary: an IndexError on CPU, a
        device-side assert on a GPU). One host synchronisation per ``generate`` call."""
        if input_ids.dim() != 2 or input_ids.size(1) == 0:
            raise ValueError(f"input_ids must be [batch, prompt length] with at least one token per row, got shape "
                             f"{tuple(input_ids.shape)}: start the prompt with the tokenizer's BOS or EOS id")
        vocab = self.get_input_embeddings().num_embeddings
        low, high = (int(v) for v in torch.stack([input_ids.min(), input_ids.max()]).tolist())
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids holds token id {low if low < 0 else high}, outside this model's vocabulary "
                             f"0..{vocab - 1}: encode the prompt with the tokenizer saved with the model")

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id=None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        stopping_criteria=None,
        prefill: str | None = None,
        num_jacobi_rounds: int | None = None,
        jacobi_tol: float | None = None,
        **kwargs,
    ) -> Tensor:
        """Greedy or sampled decoding; returns [b, prompt + new] token ids.

        A self-contained loop (not GenerationMixin, whose one-cache-one-pass-per-token model does
        not fit S+1 passes or N+1 slots per token); sampling uses transformers' logits warpers.

        * ``use_cache=True``: ponder keeps one DynamicCache per pass (S+1); latent keeps one cache
          that grows by N+1 entries per token (token slot, then its N thoughts, one slot per step,
          all at the token's position id): every new token's thoughts follow the sequential
          definition given the cache. The prompt (latent) is filled by ``prefill``:

          - ``"jacobi"`` (default, how the papers' models were evaluated): the N initial passes,
            J Jacobi rounds and the final pass over the whole prompt in parallel (N+J+1 passes);
            the cache holds the final pass's keys/values. The first token's logits are those of
            the scoring forward at the prompt's last position with the same J.
          - ``"sequential"``: the prompt slot by slot ((N+1)P single-slot steps), exact.

          The two agree once J >= N*P. Ponder mode: the prompt runs through the S+1 passes in
          parallel either way (every pass is causal, so that is exact).
        * ``use_cache=False``: every step re-runs the scoring forward over the whole sequence
          (latent: with J = N*L Jacobi rounds, which equals the sequential definition): the
          uncached reference of ``prefill="sequential"``.

        Args:
            input_ids: [b, P] prompts (left-padded if their lengths differ).
            attention_mask: [b, P], 0 at padding (default: all ones).
            max_new_tokens / max_length: how many tokens to add / total length cap.
            do_sample, temperature, top_k, top_p: sampling (torch's global RNG: seed it).
            eos_token_id: int or list; a row that emitted it gets ``pad_token_id`` afterwards.
                Default: ``self.generation_config.eos_token_id`` (as HF's ``generate``); no early
                stop when neither is set.
            stopping_criteria: callables ``(input_ids, scores) -> bool | BoolTensor[b]``.
            prefill: ``"jacobi"`` or ``"sequential"`` (latent prompt filling, see above; default
                ``"jacobi"`` with the cache, ``"sequential"`` without).
            num_jacobi_rounds: J of the Jacobi prefill (default ``config.jacobi_eval_rounds``).
            jacobi_tol: adaptive Jacobi prefill: stop its rounds once a round's residual over the
                batch is below it (at most J); the rounds run are left in
                ``self.jacobi_rounds_used``. None or 0 (default): the J rounds.
        """
        for name, value in kwargs.items():
            if name not in _IGNORED_GENERATE_KWARGS or value != _IGNORED_GENERATE_KWARGS[name]:
                raise ValueError(f"PonderLMForCausalLM.generate does not support {name}={value!r}")
        self._check_prompt(input_ids)
        if max_new_tokens is None:
            if max_length is None:
                raise ValueError("generate() needs max_new_tokens (or max_length)")
            max_new_tokens = max_length - input_ids.size(1)
            if max_new_tokens < 1:  # the prompt already fills max_length
                return input_ids
        elif max_new_tokens < 1:  # stock transformers' check, same words
            raise ValueError(f"`max_new_tokens` must be greater than 0, but is {max_new_tokens}.")
        # A model built from its config (not from_pretrained) has no generation_config attribute.
        generation_config = getattr(self, "generation_config", None)
        if eos_token_id is None:
            eos_token_id = getattr(generation_config, "eos_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(generation_config, "pad_token_id", None)
        eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        if eos and pad_token_id is None:
            pad_token_id = eos[0]
        warpers = LogitsProcessorList()
        if do_sample:
            if temperature is not None and temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(temperature))
            if top_k:
                warpers.append(TopKLogitsWarper(top_k))
            if top_p is not None and top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))

        rounds = self._prefill_rounds(use_cache, prefill, num_jacobi_rounds)
        if jacobi_tol is not None and (rounds is None or not jacobi_tol >= 0):
            raise ValueError(f"generate(jacobi_tol={jacobi_tol!r}) needs a number >= 0 and the Jacobi prefill "
                             "(use_cache=True, prefill='jacobi')")
        attention_mask, position_ids = self._mask_and_positions(input_ids, attention_mask, None)
        decoder = (_CachedDecoder(self, input_ids, attention_mask, position_ids, rounds, jacobi_tol)
                   if use_cache else None)
        sequences, mask = input_ids, attention_mask
        finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        logits = decoder.prefill_logits if decoder is not None else None
        for step in range(max_new_tokens):
            if decoder is None:
                logits = self._uncached_next_token_logits(sequences, mask)
            elif step > 0:
                logits = decoder.append(sequences[:, -1])
            scores = warpers(sequences, logits.float())
            if do_sample:
                next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            if pad_token_id is not None:  # rows finished by eos or a stopping criterion
                next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
            if eos:
                finished |= torch.isin(next_tokens, torch.tensor(eos, device=next_tokens.device))
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if stopping_criteria is not None:
                for criterion in stopping_criteria:
                    finished |= torch.as_tensor(criterion(sequences, scores), device=finished.device)
            if (eos or stopping_criteria is not None) and bool(finished.all()):
                break
        return sequences

    def _prefill_rounds(self, use_cache: bool, prefill: str | None, num_jacobi_rounds: int | None) -> int | None:
        """J of the Jacobi prefill, or None for the sequential prefill (bad combinations raise)."""
        if prefill not in (None, "jacobi", "sequential"):
            raise ValueError(f"generate(prefill={prefill!r}): use 'jacobi' or 'sequential'")
        if not use_cache:
            if prefill == "jacobi" or num_jacobi_rounds is not None:
                raise ValueError("generate(use_cache=False) recomputes the exact sequential thoughts at every "
                                 "step; the Jacobi prefill needs use_cache=True (or pass prefill='sequential')")
            return None
        if (prefill or "jacobi") == "sequential":
            if num_jacobi_rounds is not None:
                raise ValueError("generate(num_jacobi_rounds=...) applies to prefill='jacobi', not 'sequential'")
            return None
        rounds = self.config.jacobi_eval_rounds if num_jacobi_rounds is None else num_jacobi_rounds
        if not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"generate(num_jacobi_rounds={rounds!r}) must be an integer >= 0")
        return rounds

    def _uncached_next_token_logits(self, sequences: Tensor, mask: Tensor) -> Tensor:
        """[b, L] -> [b, V] logits for the next token, recomputing the whole sequence."""
        rounds = self.config.num_latent_thoughts * sequences.size(1)  # J >= N*L: sequential
        return self.forward(sequences, attention_mask=mask, num_jacobi_rounds=rounds).logits[:, -1]


def _residual(previous: list[Tensor], updated: list[Tensor]) -> float:
    """||z^j - z^(j-1)||^2 / numel over every thought of the batch (N tensors [b, L, h]), summed
    in float64 as the Megatron model's adaptive rounds do; one host read."""
    squares = sum((new - old).float().pow(2).sum(dtype=torch.float64) for new, old in zip(updated, previous))
    return float(squares) / sum(t.numel() for t in updated)


class _CachedDecoder:
    """KV-cached decoding state of one ``generate`` call.

    ponder: S+1 DynamicCaches, cache k holds pass k's keys/values of every position so far.
    latent: one DynamicCache over the slot sequence, N+1 entries per token.
    ``jacobi_rounds``: J of the latent Jacobi prefill, or None for the sequential prefill.
    """

    def __init__(self, model: PonderLMForCausalLM, input_ids: Tensor, attention_mask: Tensor,
                 position_ids: Tensor, jacobi_rounds: int | None = None, jacobi_tol: float | None = None):
        self.model = model
        config = model.config
        self.latent = config.ponder_mode == "latent"
        self.slots_per_token = config.num_latent_thoughts + 1 if self.latent else 1
        self.caches = [model._new_cache() for _ in range(1 if self.latent else config.ponder_steps + 1)]
        self.slot_mask = attention_mask[:, :0]  # [b, slots so far]
        self.last_position = position_ids[:, -1:]  # [b, 1]
        self.jacobi_rounds = jacobi_rounds
        self.jacobi_tol = jacobi_tol
        self.prefill_logits = self._prefill(input_ids, attention_mask, position_ids)  # [b, V]

    def append(self, tokens: Tensor) -> Tensor:
        """Feed one new token per row [b]; returns the logits for the token after it [b, V]."""
        position = self.last_position + 1
        self.last_position = position
        token_mask = torch.ones_like(self.slot_mask[:, :1])
        return self._feed(tokens[:, None], token_mask, position)[:, -1]

    def _prefill(self, input_ids, attention_mask, position_ids) -> Tensor:
        if not self.latent:
            return self._feed(input_ids, attention_mask, position_ids)[:, -1]
        if self.jacobi_rounds is not None:
            return self._jacobi_prefill(input_ids, attention_mask, position_ids)
        # Sequential: a prompt token's thoughts depend on all earlier thoughts, so the prompt is
        # fed slot by slot too (one pass of total length (N+1)P, as single-slot steps).
        for index in range(input_ids.size(1)):
            logits = self._feed(input_ids[:, index:index + 1], attention_mask[:, index:index + 1],
                                position_ids[:, index:index + 1])
        return logits[:, -1]

    def _jacobi_prefill(self, input_ids, attention_mask, position_ids) -> Tensor:
        """The scoring forward's passes over the prompt; the final one fills the cache -> [b, V]."""
        model = self.model
        token_inputs = model.embed_tokens(input_ids, position_ids)  # [b, P, h]
        thoughts = model._latent_thoughts(token_inputs, position_ids, attention_mask, self.jacobi_rounds,
                                          self.jacobi_tol)
        self.slot_mask = attention_mask.repeat_interleave(self.slots_per_token, dim=1)  # [b, (N+1)P]
        outputs = model._latent_pass(token_inputs, thoughts, position_ids, attention_mask, self.caches[0])
        return model.output_logits(outputs[:, -1, -1])  # last thought slot of the last token

    def _feed(self, tokens: Tensor, token_mask: Tensor, positions: Tensor) -> Tensor:
        """Run tokens [b, t] (latent: t = 1) through the cached passes -> logits [b, t, V]."""
        model = self.model
        token_inputs = model.embed_tokens(tokens, positions)
        if not self.latent:
            self.slot_mask = torch.cat([self.slot_mask, token_mask], dim=1)
            return model._ponder_logits(token_inputs, positions, self.slot_mask, self.caches)
        slot_input = token_inputs
        for _ in range(self.slots_per_token):  # token slot, then thought 1..N
            self.slot_mask = torch.cat([self.slot_mask, token_mask], dim=1)
            slot_input = model.transformer_pass(slot_input, positions, self.slot_mask, self.caches[0])
        return model.output_logits(slot_input)  # output of the last thought slot
