"""DALI GPU prefetch: with CUDA the DALI loader hands over CUDA tensors equal to the default loader's."""

import pytest
import torch
from support.indexed_documents import write_random_documents

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI GPU prefetch needs CUDA"),
]
pytest.importorskip("nvidia.dali", reason='DALI is not installed: pip install -e ".[dali]" (or ".[dali-cuda12]")')

VOCAB, SEQ = 97, 16


def test_dali_gpu_batches_match_the_default_loader(megatron_world_of_one, tmp_path):
    from megatron_ponder.data.dali_loader import DaliMicrobatchStream
    from megatron_ponder.data.datasets import MicrobatchStream, build_gpt_datasets
    from megatron_ponder.data.tokenizer import NullTokenizer

    prefix = write_random_documents(str(tmp_path / "docs"), 40, VOCAB)
    train, _, _ = build_gpt_datasets([prefix], "1,0,0", SEQ, 1234, NullTokenizer(VOCAB), (64, 0, 0),
                                     cache_dir=str(tmp_path / "cache"))
    default = MicrobatchStream(train, 8, 2, 1, 2)
    dali = DaliMicrobatchStream(train, 8, 2, 1, 2)  # device "auto": the current CUDA device
    for _ in range(12):
        for want, got in zip(default.next_step(), dali.next_step(), strict=True):
            for key in ("tokens", "labels", "loss_mask", "position_ids"):
                assert got[key].is_cuda
                assert torch.equal(got[key].cpu(), want[key]), key
