"""``--dataloader-type dali``: this rank's microbatches assembled by an NVIDIA DALI pipeline.

:class:`DaliMicrobatchStream` is a drop-in for :class:`~megatron_ponder.data.datasets.MicrobatchStream`
(same ``next_step()`` and ``consumed_samples``) that yields the same batches, bit for bit.

Who decides what:

* Sample order is Megatron's and the stream's, not DALI's: the dataset indices of step k on
  data-parallel rank r come from :func:`~megatron_ponder.data.datasets.rank_step_indices` (the
  function ``MicrobatchStream`` uses), and each index goes through Megatron's own blend index
  (``BlendedDataset``) and document / sample / shuffle indices (``GPTDataset``).
* Reading: a per-sample ``fn.external_source`` callback turns sample k of this rank's stream into
  its ``[seq_length + 1]`` token window with ``GPTDataset._query_document_sample_shuffle_indices``
  (slices of the ``.bin`` memmap, joined across document boundaries, padded with the pad id;
  called through ``runtime.megatron_compat.gpt_dataset_window``, whose return differs by version).
  With ``py_workers = 0`` (the default, and the only choice with CUDA) DALI calls it on the
  training thread when the iterator schedules a batch (reads run ahead of use by the prefetch
  depth, but on that thread); with ``py_workers > 0`` worker processes run it.
* DALI: the window -> ``tokens``/``labels`` shift, ``loss_mask`` (0 where the label is padding),
  padding ids -> 0, ``position_ids``, batching into ``[micro_batch_size, seq_length]``, and a
  prefetch queue of ``prefetch_queue_depth`` microbatches built on DALI's threads while the model
  computes. With CUDA the outputs are copied to the GPU inside that queue (GPU prefetch).

What it accelerates: no work is saved (the reads are Megatron's either way, and per CPU second the
default loader is as cheap); collation (and, with worker processes, the reads) move off the
training loop's thread and run ahead of the step, and on GPU the host-to-device copy joins them.
docs/benchmarks/data_loaders.md has the numbers.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from megatron_ponder.data.datasets import check_stream_layout, rank_step_indices
from megatron_ponder.data.errors import DataError
from megatron_ponder.runtime.megatron_compat import gpt_dataset_window

INSTALL_HINT = 'pip install -e ".[dali]"'
_OUTPUTS = ("tokens", "labels", "loss_mask", "position_ids")


def import_dali():
    """``(fn, types, pipeline_def, DALIGenericIterator)``; DataError naming the extra when absent."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError:
        raise DataError(
            f"--dataloader-type dali needs NVIDIA DALI, which is not installed: {INSTALL_HINT} "
            "(or use the default --dataloader-type single)"
        ) from None
    return fn, types, pipeline_def, DALIGenericIterator


def _gpt_datasets(dataset) -> List:
    """The GPTDatasets under ``dataset`` (itself, or the parts of a BlendedDataset)."""
    return list(dataset.datasets) if hasattr(dataset, "dataset_index") else [dataset]


def window_layout(dataset) -> Tuple[int, int]:
    """``(seq_length, pad_id)`` of a (blended) Megatron GPT dataset the DALI graph reproduces.

    DataError for a config whose samples the graph does not build the same way (per-document
    position ids, document attention masks, EOD loss masking, samples without the extra label
    token).
    """
    layouts = set()
    for part in _gpt_datasets(dataset):
        config = part.config
        if (not config.add_extra_token_to_sequence or config.reset_position_ids or config.eod_mask_loss
                or config.reset_attention_mask):
            raise DataError(
                "--dataloader-type dali builds samples of seq_length + 1 tokens with plain "
                "positions, causal attention and no EOD loss masking; this dataset's config differs "
                "(--reset-position-ids, --reset-attention-mask or --eod-mask-loss): use the default "
                "--dataloader-type single"
            )
        layouts.add((int(config.sequence_length), int(part._pad_token_id)))
    if len(layouts) != 1:
        raise DataError(f"blended datasets disagree on (seq_length, pad id): {sorted(layouts)}")
    return layouts.pop()


def read_window(dataset, index: int) -> np.ndarray:
    """``[seq_length + 1]`` int64 tokens of sample ``index``, exactly as Megatron reads them.

    Blending and the GPT sample lookup are Megatron's: BlendedDataset's (dataset, sample) index,
    then GPTDataset's shuffle / sample / document indices over the ``.bin`` memmap.
    """
    if hasattr(dataset, "dataset_index"):  # BlendedDataset
        if dataset.dataset_index is None:
            dataset[index]  # Megatron memory-maps its blend index on first access
        part = dataset.datasets[int(dataset.dataset_index[index])]
        index = int(dataset.dataset_sample_index[index])
        dataset = part
    return gpt_dataset_window(dataset, index)


class RankWindowSource:
    """DALI per-sample source: sample k of this rank's stream -> its token window.

    Sample k of the stream started at ``consumed_samples`` is item ``k % per_rank`` of step
    ``k // per_rank`` of :func:`rank_step_indices`, so the source can run ahead (prefetch, worker
    processes) and still follow the default loader's order exactly.
    """

    def __init__(self, dataset, consumed_samples: int, global_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int) -> None:
        self.dataset = dataset
        self.consumed_samples = consumed_samples
        self.global_batch_size = global_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.per_rank = global_batch_size // data_parallel_size
        self._step: Optional[int] = None
        self._indices: List[int] = []

    def dataset_index(self, k: int) -> int:
        step, item = divmod(k, self.per_rank)
        if step != self._step:  # one list per step: consecutive calls share it
            self._indices = rank_step_indices(
                self.consumed_samples + step * self.global_batch_size, self.global_batch_size,
                self.data_parallel_rank, self.data_parallel_size, len(self.dataset))
            self._step = step
        return self._indices[item]

    def __call__(self, sample_info) -> np.ndarray:
        return read_window(self.dataset, self.dataset_index(sample_info.idx_in_epoch))


class DaliMicrobatchStream:
    """This rank's microbatches of successive global batches, built by a DALI pipeline.

    Same arguments and output as :class:`~megatron_ponder.data.datasets.MicrobatchStream`, plus
    the DALI settings: ``device_id`` (None: CPU-only pipeline; a CUDA device: outputs copied to it
    in the prefetch queue; "auto": the current CUDA device when CUDA is available, else None),
    ``num_threads`` (DALI CPU threads; the graph's ops are light, and on CPU the training processes
    already hold the cores), ``prefetch_queue_depth`` (microbatches built ahead) and
    ``py_workers`` (processes running the window reads; 0 reads in this process).
    """

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        consumed_samples: int = 0,
        *,
        device_id: Union[int, None, str] = "auto",
        num_threads: int = 1,
        prefetch_queue_depth: int = 2,
        py_workers: int = 0,
    ) -> None:
        fn, types, pipeline_def, iterator_class = import_dali()
        num_microbatches = check_stream_layout(dataset, global_batch_size, micro_batch_size,
                                               data_parallel_rank, data_parallel_size, consumed_samples)
        if device_id == "auto":
            device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        if py_workers > 0 and device_id is not None:
            raise DataError("--dali-py-workers needs a CPU-only pipeline (DALI forks its workers, which "
                            "CUDA forbids): use --dali-py-workers 0 with CUDA")
        seq_length, pad_id = window_layout(dataset)
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.num_microbatches = num_microbatches
        self.consumed_samples = consumed_samples
        self.device_id = device_id
        source = RankWindowSource(dataset, consumed_samples, global_batch_size,
                                  data_parallel_rank, data_parallel_size)

        @pipeline_def(batch_size=micro_batch_size, num_threads=num_threads, device_id=device_id,
                      prefetch_queue_depth=prefetch_queue_depth, py_num_workers=max(py_workers, 1),
                      py_start_method="fork", seed=0)
        def microbatch_pipeline():
            window = fn.external_source(source=source, batch=False, parallel=py_workers > 0,
                                        dtype=types.INT64, ndim=1, name="windows")
            tokens, labels = window[0:seq_length], window[1:seq_length + 1]
            label_kept = labels != pad_id
            loss_mask = fn.cast(label_kept, dtype=types.FLOAT)
            # Padding ids (Megatron pads with -1) become 0 so the embedding can look them up.
            tokens = tokens * (tokens != pad_id)
            labels = labels * label_kept
            position_ids = fn.constant(idata=list(range(seq_length)), shape=[seq_length],
                                       dtype=types.INT64)
            outputs = (tokens, labels, loss_mask, position_ids)
            if device_id is not None:
                outputs = tuple(out.gpu() for out in outputs)
            return outputs

        self._pipeline = microbatch_pipeline()
        self._pipeline.build()
        # size=-1: the source never ends (indices wrap around the dataset, as in the default loader).
        self._batches = iterator_class([self._pipeline], list(_OUTPUTS), size=-1, auto_reset=False,
                                       prepare_first_batch=True)

    def next_microbatch(self) -> Dict[str, Optional[torch.Tensor]]:
        """One ``[micro_batch_size, seq_length]`` batch dict (``attention_mask`` None)."""
        batch = next(self._batches)[0]
        return {**{name: batch[name] for name in _OUTPUTS}, "attention_mask": None}

    def next_step(self) -> List[Dict[str, Optional[torch.Tensor]]]:
        """``num_microbatches`` dicts, as :meth:`MicrobatchStream.next_step`."""
        batches = [self.next_microbatch() for _ in range(self.num_microbatches)]
        self.consumed_samples += self.global_batch_size
        return batches
