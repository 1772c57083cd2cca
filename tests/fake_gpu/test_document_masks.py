"""Document masks on the training path, on a fake GPU, in every mode and in TP, PP and CP layouts.

With ``--reset-position-ids --reset-attention-mask --eod-mask-loss`` the loader's host batches
carry Megatron's per-sample document masks [b, 1, L, L]; the step moves them to the device with
the batch, splits their rows under CP, hands them to every pipeline stage and pass, and the
layers apply them (the SDPA attention, or the context-parallel attention under CP). A device
error anywhere (a mask left on the host, a slot mask built on the CPU) fails the test.

The loader runs with real tensors (fake mode set aside): Megatron's mask builder indexes by the
EOD positions, a data-dependent shape that fake tensors cannot represent; on a GPU machine it
runs on the host too. Everything from the step on runs on the fake GPU.
"""

import pytest
import torch

from support.fake_gpu_runs import LAYOUTS, MODES, fake_gpu_run

pytestmark = pytest.mark.fake_gpu

DOCUMENT_FLAGS = ["--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss"]
CHOSEN = ("single", "tp2", "pp2-first", "pp2-last", "cp2")


def _host_batches(run, dataset):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return run.stream(dataset).next_step()


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout.name in CHOSEN], ids=lambda layout: layout.name)
@pytest.mark.parametrize("mode", MODES)
def test_train_and_evaluate_with_document_masks(mode, layout):
    from megatron_ponder.training.step import evaluation_step, train_step

    with fake_gpu_run(mode, layout, DOCUMENT_FLAGS) as run:
        assert run.config.reset_attention_mask
        microbatches = _host_batches(run, run.train_set)
        mask = microbatches[0]["attention_mask"]
        length = run.args.seq_length
        assert mask is not None and mask.dtype == torch.bool and mask.device.type == "cpu"
        assert mask.shape == (run.args.micro_batch_size, 1, length, length)
        result = train_step(run.chunks, run.optimizer, microbatches, run.args.micro_batch_size, length, 0)
        assert not result.skipped and result.grad_norm is not None
        evaluation = evaluation_step(run.chunks, _host_batches(run, run.valid_set), run.args.micro_batch_size, length)
        assert evaluation.grad_norm is None
