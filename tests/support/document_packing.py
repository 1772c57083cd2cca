"""Packed samples of whole documents, and the same documents alone, for the document-mask tests.

Every sample is built by Megatron's own ``_get_ltor_masks_and_position_ids`` (what ``GPTDataset``
calls for ``--reset-position-ids --reset-attention-mask --eod-mask-loss``), so the tests check the
model against the data layer's exact tensors: positions restart after each end-of-document token,
the attention mask [1, L, L] (True = masked) keeps every token inside its document, and the loss
mask is 0 at end-of-document tokens.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from support.tiny_models import VOCAB

EOD = VOCAB - 1
# Two documents, each ending with EOD; lengths divisible by 2*cp*tp (CP=2 with TP=2 SP: 8), and
# both orders of the two fit the tiny models' 32 positions.
DOCUMENT_LENGTHS = (8, 16)


def documents(seed: int = 0, lengths: Sequence[int] = DOCUMENT_LENGTHS) -> List[torch.Tensor]:
    """Random documents [n] int64 (no EOD inside), each ending with EOD."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randint(0, EOD, (n - 1,), generator=generator), torch.tensor([EOD])]) for n in lengths]


def sample_batch(samples: Sequence[torch.Tensor], document_masks: bool = True) -> Dict[str, torch.Tensor]:
    """A batch of equally long samples [b, L] as the data layer gives it.

    ``document_masks``: Megatron's three document flags on (else plain positions, causal
    attention (mask None) and every token in the loss: the packed sample as one document).
    Labels are the next token; the last label (past the sample) is 0, as Megatron's padding label.
    """
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    rows = []
    for tokens in samples:
        mask, loss_mask, positions = _get_ltor_masks_and_position_ids(
            tokens, EOD, document_masks, document_masks, document_masks, document_masks
        )
        labels = torch.cat([tokens[1:], tokens.new_zeros(1)])
        rows.append(dict(tokens=tokens, labels=labels, loss_mask=loss_mask, position_ids=positions, attention_mask=mask))
    batch = {key: torch.stack([row[key] for row in rows]) for key in ("tokens", "labels", "loss_mask", "position_ids")}
    batch["attention_mask"] = torch.stack([row["attention_mask"] for row in rows]) if document_masks else None
    return batch


def packed_and_alone(seed: int = 0):
    """(packed batch [2, L]: the documents in both orders, the documents' own batches [1, n_i]).

    Each document alone has its positions from 0, causal attention, and its EOD out of the loss.
    """
    docs = documents(seed)
    packed = sample_batch([torch.cat(docs), torch.cat(docs[::-1])])
    alone = [sample_batch([doc]) for doc in docs]
    return packed, alone


def alone_token_losses(per_doc_losses: List[torch.Tensor]) -> torch.Tensor:
    """The per-token losses [2, L] the packed batch must give, from each document's own [1, n_i]."""
    return torch.stack([torch.cat([loss[0] for loss in per_doc_losses]),
                        torch.cat([loss[0] for loss in per_doc_losses[::-1]])])
