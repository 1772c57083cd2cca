"""The vanilla, pondering and latent-thought losses, written straight from docs/methods.md.

All functions take a :class:`reference.model.ReferenceModel`, batch-first tensors
``tokens, labels, position_ids: [b, L]`` and return the per-token cross-entropy ``[b, L]`` in
fp32 with no reduction. Nothing is detached: gradients flow through every pass, unless a
``grad_steps`` / ``grad_rounds`` K asks for truncated backprop (docs/methods.md): the state after
ponder step S-K / Jacobi round J-K is detached before the next pass reads it.

Latent-thought slot layout (N thoughts per token), 0-based token index i:
    interleaved sequence [x_1, z_1^1..z_1^N, x_2, z_2^1..z_2^N, ...] of length (N+1)L,
    slot of x_i = i(N+1), slot of z_i^k = i(N+1) + k, every slot of token i has position pos_i.
Token slots hold scale * embed(x_i, pos_i); thought slots hold body outputs unchanged.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from reference.model import ReferenceModel


def per_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [b, L, V], labels [b, L] -> fp32 cross entropy [b, L]."""
    b, L, V = logits.shape
    loss = F.cross_entropy(logits.float().reshape(b * L, V), labels.reshape(b * L), reduction="none")
    return loss.view(b, L)


def vanilla_loss(model: ReferenceModel, tokens, labels, position_ids) -> torch.Tensor:
    """One pass: CE(logits(body(embed(tokens)))) -> [b, L]."""
    h = model.body(model.embed(tokens, position_ids), position_ids)
    return per_token_ce(model.logits(h), labels)


def ponder_loss(
    model: ReferenceModel,
    tokens,
    labels,
    position_ids,
    steps: int,
    accumulate: bool,
    scale: float,
    topk: Optional[int] = None,
    grad_steps: Optional[int] = None,
) -> torch.Tensor:
    """Pondering with `steps` ponder steps (steps + 1 full passes) -> [b, L].

    e0 = scale * embed; per step: p = softmax(logits(body(cur))) over the vocab,
    cur = cur + scale * p @ E (accumulate) or e0 + scale * p @ E; loss on the final pass only.
    With `topk` = K: p = softmax over the K largest logits only, mixture = sum_j p_j E[id_j].
    With `grad_steps` = K < steps: the fed-back state (cur - e0: the running sum, or the last
    mixture) after step steps-K is detached, e0 is not.
    """
    e0 = scale * model.embed(tokens, position_ids)  # [b, L, h]
    cur = e0
    weight = model.word_embedding_weight
    for step in range(steps):
        if grad_steps is not None and step == steps - grad_steps:
            cur = e0 + (cur - e0).detach()
        logits = model.logits(model.body(cur, position_ids)).float()  # [b, L, V]
        if topk is None:
            p = torch.softmax(logits, dim=-1)  # [b, L, V]
            mixed = scale * (p.to(weight.dtype) @ weight)  # [b, L, h]
        else:
            values, ids = logits.topk(topk, dim=-1)  # [b, L, K]
            p = torch.softmax(values, dim=-1)
            mixed = scale * (p.unsqueeze(-1).to(weight.dtype) * weight[ids]).sum(dim=-2)  # [b, L, h]
        cur = cur + mixed if accumulate else e0 + mixed
    return per_token_ce(model.logits(model.body(cur, position_ids)), labels)


def interleave(token_slots: torch.Tensor, thoughts: List[torch.Tensor]) -> torch.Tensor:
    """token_slots [b, L, h], thoughts: k tensors [b, L, h] -> [b, (k+1)L, h] in the order
    [x_1, z_1^1..z_1^k, x_2, ...]."""
    b, L, h = token_slots.shape
    groups = torch.stack([token_slots] + list(thoughts), dim=2)  # [b, L, k+1, h]
    return groups.reshape(b, L * (len(thoughts) + 1), h)


def interleaved_positions(position_ids: torch.Tensor, slots_per_token: int) -> torch.Tensor:
    """[b, L] -> [b, slots_per_token * L]: every slot of token i carries pos_i."""
    return position_ids.repeat_interleave(slots_per_token, dim=1)


def _final_thought_loss(model, token_slots, thoughts, position_ids, labels) -> torch.Tensor:
    """Final pass over the full interleaved sequence; CE at the slot of z_i^N -> [b, L]."""
    N = len(thoughts)
    seq = interleave(token_slots, thoughts)
    H = model.body(seq, interleaved_positions(position_ids, N + 1))
    last_thought_slots = torch.arange(token_slots.shape[1], device=seq.device) * (N + 1) + N
    return per_token_ce(model.logits(H[:, last_thought_slots]), labels)


def latent_loss(
    model: ReferenceModel,
    tokens,
    labels,
    position_ids,
    num_thoughts: int,
    jacobi_rounds: int,
    scale: float,
    grad_rounds: Optional[int] = None,
) -> Tuple[torch.Tensor, List[float]]:
    """Latent thoughts with Jacobi iterations -> (loss [b, L], residual per round).

    Initial thoughts (the papers' rule): for k = 1..N, body over [x_i, z_i^1..z_i^{k-1}]_i
    (length kL, k slots per group), then every thought present is set from it:
    z_i^j <- H[slot j-1 of group i] = H[:, i*k + j - 1] for j = 1..k (z^1..z^{k-1} refreshed as
    in a Jacobi round, the new z^k from the group's last slot).
    Jacobi round: body over the (N+1)L sequence, then simultaneously
    z_i^k <- H[:, i(N+1) + k - 1]. Residual = mean((z_new - z_old)^2) over all thoughts.
    With `grad_rounds` = K < jacobi_rounds: the thoughts after round jacobi_rounds-K are detached
    (nothing before them gets a gradient through the thoughts; the token slots still do).
    """
    N = num_thoughts
    if N < 1:
        raise ValueError("latent_loss needs num_thoughts >= 1")
    token_slots = scale * model.embed(tokens, position_ids)  # [b, L, h]
    L = token_slots.shape[1]
    token_index = torch.arange(L, device=token_slots.device)

    thoughts: List[torch.Tensor] = []  # thoughts[k-1] = z^k, [b, L, h]
    for k in range(1, N + 1):
        H = model.body(interleave(token_slots, thoughts), interleaved_positions(position_ids, k))
        thoughts = [H[:, token_index * k + (j - 1)] for j in range(1, k + 1)]

    residuals: List[float] = []
    full_positions = interleaved_positions(position_ids, N + 1)
    for round_index in range(jacobi_rounds):
        if grad_rounds is not None and round_index == jacobi_rounds - grad_rounds:
            thoughts = [z.detach() for z in thoughts]
        H = model.body(interleave(token_slots, thoughts), full_positions)
        new = [H[:, token_index * (N + 1) + (k - 1)] for k in range(1, N + 1)]
        residuals.append(
            torch.stack([(n - o).float().pow(2) for n, o in zip(new, thoughts, strict=True)]).mean().item()
        )
        thoughts = new

    return _final_thought_loss(model, token_slots, thoughts, position_ids, labels), residuals


def latent_sequential_loss(
    model: ReferenceModel, tokens, labels, position_ids, num_thoughts: int, scale: float
) -> torch.Tensor:
    """The sequential definition z_i^k = H(everything before it)[last slot] -> loss [b, L].

    Builds the interleaved sequence slot by slot (N passes per token), then one final pass.
    Equals :func:`latent_loss` with jacobi_rounds >= N * L.
    """
    N = num_thoughts
    token_slots = scale * model.embed(tokens, position_ids)  # [b, L, h]
    b, L, h = token_slots.shape
    slots: List[torch.Tensor] = []  # each [b, h]
    slot_positions: List[torch.Tensor] = []  # each [b]
    thoughts = [[None] * L for _ in range(N)]
    for i in range(L):
        slots.append(token_slots[:, i])
        slot_positions.append(position_ids[:, i])
        for k in range(N):
            H = model.body(torch.stack(slots, dim=1), torch.stack(slot_positions, dim=1))
            slots.append(H[:, -1])
            slot_positions.append(position_ids[:, i])
            thoughts[k][i] = H[:, -1]
    thought_tensors = [torch.stack(thoughts[k], dim=1) for k in range(N)]  # N x [b, L, h]
    return _final_thought_loss(model, token_slots, thought_tensors, position_ids, labels)
