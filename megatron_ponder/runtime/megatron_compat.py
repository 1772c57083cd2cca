"""Megatron-Core version differences, 0.16.1 through 0.19.x: the one place that knows them.

The plugin runs on megatron-core 0.16.1 (the newest release for Python 3.11) and on the 0.17,
0.18 and 0.19 lines (Python >= 3.12, the NeMo / NGC containers). Every API difference that the
plugin's code meets is handled here, each with a one-line comment naming what changed and in which
release; call sites import the function below instead of Megatron's. Differences are detected by
feature (a parameter, a dataclass field), not by comparing version numbers, so a backport of a
change to a patch release is handled too. The list with the reasons is in docs/compatibility.md.

Differences that need no code here (the plugin's calls are valid on every supported version):
  * 0.17: ``schedules.backward_step`` lost ``model_type``: the plugin only hands models to
    ``get_forward_backward_func()``'s schedules and never calls ``backward_step`` itself.
  * 0.19: ``get_forward_backward_func`` gained ``schedule_pg_collection`` (optional; None = the
    global parallel_state groups, which the plugin uses).
  * 0.19: ``dist_checkpointing.save`` / ``load`` lost ``common_strategy``: the plugin never passes it.
  * 0.17 - 0.19: TransformerConfig / ModelParallelConfig fields added (defaults keep the old
    behaviour) and removed (``async_tensor_model_parallel_allreduce``, ``moe_extended_tp``,
    ``moe_use_legacy_grouped_gemm``): the plugin sets none of the removed ones.
  * 0.18: ``GPTModel.forward`` gained the ``output_processor`` hook: ``PonderGPTModel.forward``
    passes it on in mode ``none`` and refuses it in the multi-pass modes (like the other
    GPTModel arguments they do not support).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import fields
from importlib import metadata
from typing import Any, Dict, Optional, Tuple

import numpy as np

SUPPORTED_RANGE = ">=0.16.1,<0.20"
_OLDEST = (0, 16, 1)
_FIRST_UNSUPPORTED = (0, 20)


class UnsupportedMegatronCoreError(ImportError):
    """The installed megatron-core is outside the range this plugin is tested with."""


def installed_megatron_core_version() -> str:
    """The installed megatron-core version string, read without importing megatron.core."""
    try:
        return metadata.version("megatron-core")
    except metadata.PackageNotFoundError:
        # A source checkout on PYTHONPATH (some containers) has no distribution metadata.
        try:
            from megatron.core import package_info
        except ImportError:
            raise UnsupportedMegatronCoreError(
                f"megatron_ponder needs megatron-core {SUPPORTED_RANGE}, which is not installed: "
                f"pip install 'megatron-core{SUPPORTED_RANGE}'") from None

        return package_info.__version__


def check_megatron_core_version(version: Optional[str] = None) -> Tuple[int, ...]:
    """Release tuple of ``version`` (default: the installed one); one-line error if unsupported.

    Pre-releases count as their release (0.20.0rc0 is refused like 0.20.0).
    """
    from packaging.version import InvalidVersion, Version

    version = installed_megatron_core_version() if version is None else version
    try:
        release = Version(version).release
    except InvalidVersion:
        release = None
    if release is None or not (_OLDEST <= release and release[:2] < _FIRST_UNSUPPORTED):
        raise UnsupportedMegatronCoreError(
            f"megatron_ponder supports megatron-core {SUPPORTED_RANGE}; megatron-core {version} "
            f"is installed: pip install 'megatron-core{SUPPORTED_RANGE}'"
        )
    return release


def _accepts(function, parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


# ---------------------------------------------------------------------------------- context parallel
def get_batch_on_this_cp_rank(batch: Dict[str, Any], cp_group) -> Dict[str, Any]:
    """Megatron's split of every [b, L] tensor of ``batch`` into this CP rank's two chunks.

    Rewrites ``batch`` in place and returns it, as Megatron's helper does.
    """
    from megatron.core import utils

    if _accepts(utils.get_batch_on_this_cp_rank, "is_hybrid_cp"):
        # 0.18: gained a required is_hybrid_cp; False is the plain (load-balanced 2cp-chunk) split.
        return utils.get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=cp_group)
    return utils.get_batch_on_this_cp_rank(batch, cp_group=cp_group)


# ---------------------------------------------------------------------------------- datasets
def gpt_dataset_window(dataset, index: int) -> np.ndarray:
    """``[seq_length + 1]`` raw token ids of sample ``index`` of a GPTDataset (padding included).

    Megatron has no public call for the raw window: ``dataset[index]`` returns the window split
    into tokens / labels with padding ids already replaced by 0, and the DALI graph needs the pad
    ids to build the loss mask itself. ``tests/unit/test_megatron_compat.py`` pins this private
    call to the public ``__getitem__`` on every supported version.
    """
    # 0.19: returns (text, document ids, document lengths); before it (text, document ids).
    return dataset._query_document_sample_shuffle_indices(index)[0]


# ---------------------------------------------------------------------------------- checkpoints
def async_checkpoint_request(sharded_state_dict: Dict[str, Any], checkpoint_dir: str, sharded_strategy=None):
    """``dist_checkpointing.save(..., async_sharded_save=True)``: the AsyncRequest of ``--async-save``.

    Everything but the shard write (planning, and up to 0.18 ``common.pt``) runs now, on all ranks;
    the caller schedules the request on Megatron-Core's own
    ``strategies.async_utils.AsyncCallsQueue``, which is in every supported release.
    ``sharded_strategy``: None for Megatron-Core's default (training/checkpointing/strategies.py).
    """
    from megatron.core import dist_checkpointing

    kwargs = {"async_sharded_save": True, "sharded_strategy": sharded_strategy}
    if _accepts(dist_checkpointing.save, "async_strategy"):
        # 0.17: gained async_strategy, default "nvrx" (needs nvidia-resiliency-ext, whose requests
        # go on its own queue); "mcore" is the writer and AsyncRequest of async_utils, the only
        # one in 0.16 and what Megatron-LM's --async-strategy mcore picks.
        kwargs["async_strategy"] = "mcore"
    return dist_checkpointing.save(sharded_state_dict, checkpoint_dir, **kwargs)


# ---------------------------------------------------------------------------------- configs
def _cuda_graph_layer_field(config_class) -> str:
    names = {field.name for field in fields(config_class)}
    # 0.18: cuda_graph_scope was renamed cuda_graph_modules (the old name still parses, with a
    # DeprecationWarning).
    return "cuda_graph_modules" if "cuda_graph_modules" in names else "cuda_graph_scope"


def drop_deprecated_full_cuda_graph_scope(config) -> None:
    """Replace the TransformerConfig default ``"full"`` CUDA-graph scope by its meaning, ``[]``.

    Call before ``TransformerConfig.__post_init__``. Megatron's own default (0.16 - 0.19) is the
    deprecated "full", which means the same as the empty list (capture the whole layer) and makes
    every TransformerConfig warn "full scope is deprecated" at construction: a first run printed it
    once per process. Setting the value it stands for removes the cause, not the warning.
    """
    name = _cuda_graph_layer_field(type(config))
    if getattr(config, name) == "full":
        setattr(config, name, [])


# ---------------------------------------------------------------------------------- notices
class _Notice(logging.Filter):
    """Drops a logger's records that start with ``prefix`` (``keep_first``: all but the first)."""

    def __init__(self, prefix: str, keep_first: bool) -> None:
        super().__init__()
        self.prefix, self.keep_first, self.seen = prefix, keep_first, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        keep = self.keep_first and not self.seen
        self.seen = True
        return keep


def _filter_notice(logger_name: str, prefix: str, keep_first: bool = False) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _Notice) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_Notice(prefix, keep_first))


def gpt_model_deprecation_once() -> None:
    """Show Megatron's GPTModel deprecation notice at most once per process (idempotent).

    0.19: every GPTModel construction logs a notice in favour of HybridModel; PonderGPTModel keeps
    building on GPTModel (docs/compatibility.md), and runs build several models (export, tests).
    """
    _filter_notice("megatron.core.models.gpt.gpt_model", "GPTModel IS DEPRECATED", keep_first=True)


def quiet_inapplicable_notices() -> None:
    """Drop the notices of Megatron-Core (and torch) that do not apply to the plugin's runs.

    Called by the entry point before Megatron is imported, so that a first run shows the project's
    own lines. Each notice is matched by its text; every other warning still shows.
    """
    # 0.19: hyper_comm_grid asks for absl-py, which would only change how that module logs.
    warnings.filterwarnings("ignore", message="absl.logging is not installed", category=UserWarning)
    # 0.19: importing the schedules imports the MIMO model package, whose config says it is
    # experimental; the plugin does not use it.
    warnings.filterwarnings("ignore", message="MimoModelConfig is experimental", category=UserWarning)
    # 0.19: the checkpoint save (synchronous, and --async-save, see async_checkpoint_request) runs
    # Megatron-Core's own "mcore" async writer, which that release marks deprecated in favour of
    # nvidia-resiliency-ext's (0.17's async_strategy); the plugin does not depend on the latter.
    _filter_notice("megatron.core.dist_checkpointing.strategies.torch", "MCore's async save is deprecated")
    # 0.16: a failed shard write is logged by the writer process ("Local process N encountered an
    # error: <error>") and reported again, with the same error, in the run's one CheckpointError
    # line. From 0.17 the writer threads log "Local worker N ..." and pass on only the error's
    # type: that line carries the cause and stays.
    _filter_notice("megatron.core.dist_checkpointing.strategies.filesystem_async", "Local process ")
    # PyPI's torch for Python 3.12 (the `cpu` extra there) is a CUDA build; on a machine without
    # CUDA, Megatron's import of torch.utils.cpp_extension logs that no CUDA runtime was found.
    _filter_notice("torch.utils.cpp_extension", "No CUDA runtime is found")


gpt_model_deprecation_once()
