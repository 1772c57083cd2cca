"""Megatron-Core on CPU with the gloo backend: the one place that makes it work.

Megatron-Core 0.16.1 assumes CUDA in a handful of places (device of freshly allocated buffers,
the CUDA RNG tracker, type checks on ``torch.cuda.*Tensor`` names, ``torch.cuda.synchronize``).
On a machine without CUDA, :func:`enable_cpu_megatron` patches exactly those places so that the
unmodified Megatron model, schedules, DDP, optimizer and ``dist_checkpointing`` run on CPU.
Each patch's reason is in its docstring; the CPU test suite runs the unmodified Megatron paths
through them.

Contract:
  * acts only when ``torch.cuda.is_available()`` is False (GPU runs never touch it);
  * idempotent: calling it twice patches once;
  * every patch carries a one-line reason.

Used by the tests and by CPU runs of the training entry point. Call it before building models.
"""

from __future__ import annotations

import contextlib
import functools
from typing import List

import torch

_APPLIED: List[str] = []


def _is_cuda_device(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


# Factories Megatron calls with a literal device="cuda" (schedules, optimizer, clip_grads, grad
# buffers, attention masks, RoPE's CP slicing with pin_memory=True).
_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
    "eye", "linspace", "zeros_like", "ones_like", "empty_like", "full_like",
)


def _cpu_factory(factory):
    @functools.wraps(factory)
    def on_cpu(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)  # pinning needs a CUDA allocator
        return factory(*args, **kwargs)

    return on_cpu


def _keep_device_contexts_working() -> None:
    """Make ``with torch.device(...)`` keep placing torch's factories after they are wrapped.

    Why: the device context (``torch.utils._device.DeviceContext``, used by transformers'
    ``from_pretrained`` to build models on the meta device) redirects a factory call only when
    the function it intercepts is in ``_device_constructors()``, a set built once, on first use,
    from the ``torch.*`` attributes of that moment. Built after our wrapping, it would hold the
    wrappers, while the call it intercepts is the original factory inside the wrapper: the device
    context would silently stop applying (e.g. RoPE's ``inv_freq`` created on CPU, then treated
    as a meta placeholder and left uninitialised). Building the set now, from torch's own
    factories, keeps third-party code computing exactly what it computes without the patches.
    """
    from torch.utils import _device

    constructors = _device._device_constructors()  # lru_cache(1): built here, kept for good
    constructors.update(getattr(factory, "__wrapped__", factory)
                        for factory in (getattr(torch, name) for name in _FACTORIES))


def _patch_cuda_device_calls() -> None:
    # Why: buffers (attention masks, TP/SP gather buffers, DDP) are placed on current_device().
    torch.cuda.current_device = lambda: torch.device("cpu")
    _keep_device_contexts_working()  # before the wrapping below (see the function)
    # Why: factory calls with device="cuda" in schedules/optimizer/grad buffers/masks. Patched on
    # the torch module (not with a TorchFunctionMode, which is switched off inside the ops it
    # intercepts, e.g. inside backward() where activation recompute re-runs the forward).
    for name in _FACTORIES:
        setattr(torch, name, _cpu_factory(getattr(torch, name)))
    # Why: `.cuda()` is called on batches and on loss tensors for logging.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # Why: timers, checkpoint saving and the optimizer synchronize the device.
    torch.cuda.synchronize = lambda *args, **kwargs: None
    # Why: called after checkpoint loading and between evaluation runs.
    torch.cuda.empty_cache = lambda *args, **kwargs: None


def _patch_cuda_streams() -> None:
    class _NoStream:
        """Stand-in for torch.cuda.Stream/Event: CPU work is already ordered."""

        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def query(self):
            return True

        def elapsed_time(self, other):
            return 0.0

    # Why: grad-buffer sync and overlap paths call current_stream()/Stream/Event unconditionally.
    torch.cuda.current_stream = lambda *args, **kwargs: _NoStream()
    torch.cuda.default_stream = lambda *args, **kwargs: _NoStream()
    torch.cuda.Stream = _NoStream
    torch.cuda.Event = _NoStream
    torch.cuda.stream = lambda *args, **kwargs: contextlib.nullcontext()


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mcore_random

    class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
        """The CUDA RNG tracker's API over the CPU default generator.

        Why: `get_cuda_rng_tracker().fork()` is entered by every TP layer (even with dropout 0)
        and by activation recompute; on CPU the generator to fork is the CPU one.
        """

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise ValueError(f"RNG seed {seed} already registered")
            if name in self.states_:
                raise ValueError(f"RNG state {name!r} already registered")
            self.seeds_.add(seed)
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise KeyError(f"RNG state {name!r} was never added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    # Why: activation recompute saves/restores the CUDA generator besides the CPU one.
    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.empty(0, dtype=torch.uint8)
    mcore_random._set_cuda_rng_state = lambda *args, **kwargs: None
    # Why: initialize_rng_tracker(force_reset=True) instantiates this name.
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    mcore_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _patch_tensor_type_names() -> None:
    original_type = torch.Tensor.type

    def type_reporting_cuda(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original_type(self)
            if name.startswith("torch.") and ".cuda." not in name:
                return "torch.cuda." + name[len("torch."):]
            return name
        return original_type(self, dtype, non_blocking, **kwargs)

    # Why: optimizer/distrib_optimizer/clip_grads assert param.type() == 'torch.cuda.FloatTensor'.
    torch.Tensor.type = type_reporting_cuda


def enable_cpu_megatron() -> List[str]:
    """Patch Megatron-Core and torch.cuda so Megatron trains on CPU. No-op when CUDA exists.

    Returns the names of the patches in force (empty on a CUDA machine).
    """
    if torch.cuda.is_available():
        return []
    if _APPLIED:
        return list(_APPLIED)
    _patch_cuda_device_calls()
    _APPLIED.append("cuda_device_calls")
    _patch_cuda_streams()
    _APPLIED.append("cuda_streams")
    _patch_rng_tracker()
    _APPLIED.append("rng_tracker")
    _patch_tensor_type_names()
    _APPLIED.append("tensor_type_names")
    return list(_APPLIED)


def cpu_megatron_enabled() -> bool:
    """True once :func:`enable_cpu_megatron` has patched this process."""
    return bool(_APPLIED)
