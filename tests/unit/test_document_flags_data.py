"""The document flags reach Megatron's GPTDataset and come out in the training batches.

From an indexed dataset of random documents (each ending with the EOD token), the run's own data
path (flags -> ``prepare_data`` -> ``build_gpt_datasets`` -> ``MicrobatchStream``) gives batches
whose positions restart after every EOD (``--reset-position-ids``), whose attention mask keeps
every token inside its document (``--reset-attention-mask``, [b, 1, L, L], True = masked) and
whose loss mask is 0 exactly at EOD tokens (``--eod-mask-loss``); without the flags, plain
positions, no mask, every token counted. DALI refuses the flags in one line.
"""

import pytest
import torch

from support.indexed_documents import write_random_documents

VOCAB, EOD, SEQ = 64, 63, 32
DOCUMENT_FLAGS = ["--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss"]


def _args(prefix, tmp_path, extra):
    from megatron_ponder.training.arguments import finalize_args, parse_args

    args = parse_args(["--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
                       "--split", "1,0,0", "--seq-length", str(SEQ), "--micro-batch-size", "2",
                       "--global-batch-size", "4", "--train-iters", "2", "--eval-iters", "0",
                       "--data-cache-path", str(tmp_path / "cache"), *extra])
    finalize_args(args, 1)
    return args


def _batches(prefix, tmp_path, extra):
    from megatron_ponder.data.datasets import MicrobatchStream
    from megatron_ponder.training.build import prepare_data

    train, _ = prepare_data(_args(prefix, tmp_path, extra))
    return MicrobatchStream(train, 4, 2, 0, 1).next_step(), train


def _expected(tokens):
    """Positions, document mask (True = masked) and loss mask of one sample, from first principles."""
    document = torch.cat([torch.zeros(1, dtype=torch.long), (tokens[:-1] == EOD).long().cumsum(0)])
    starts = {int(d): int((document == d).nonzero()[0]) for d in document.unique()}
    positions = torch.arange(len(tokens)) - torch.tensor([starts[int(d)] for d in document])
    order = torch.arange(len(tokens))
    masked = (document[None, :] != document[:, None]) | (order[None, :] > order[:, None])
    return positions, masked, (tokens != EOD).float()


def test_the_flags_reach_the_dataset_and_the_batches(megatron_world_of_one, tmp_path):
    prefix = write_random_documents(str(tmp_path / "docs"), documents=60, vocab=VOCAB, lengths=(3, 12))
    batches, train = _batches(prefix, tmp_path, DOCUMENT_FLAGS)
    config = train.config
    assert (config.reset_position_ids, config.reset_attention_mask, config.eod_mask_loss) == (True, True, True)
    eods = 0
    for batch in batches:
        assert batch["attention_mask"].shape == (2, 1, SEQ, SEQ) and batch["attention_mask"].dtype == torch.bool
        for b in range(2):
            tokens = batch["tokens"][b]
            positions, masked, loss_mask = _expected(tokens)
            eods += int((tokens == EOD).sum())
            assert torch.equal(batch["position_ids"][b], positions)
            assert torch.equal(batch["attention_mask"][b, 0], masked)
            assert torch.equal(batch["loss_mask"][b], loss_mask)
    assert eods >= 8  # documents of 3-12 tokens: several boundaries per sample

    plain, _ = _batches(prefix, tmp_path, [])
    assert plain[0]["attention_mask"] is None
    assert torch.equal(plain[0]["position_ids"], torch.arange(SEQ).expand(2, -1))
    assert bool((plain[0]["loss_mask"] == 1).all())


def test_dali_refuses_the_document_flags_in_one_line(tmp_path):
    from megatron_ponder.training.arguments import ArgumentError

    prefix = str(tmp_path / "docs")
    with pytest.raises(ArgumentError, match="^--reset-attention-mask with --dataloader-type dali: .*"
                                            "use --dataloader-type single$"):
        _args(prefix, tmp_path, ["--reset-attention-mask", "--dataloader-type", "dali"])
