"""Run the project's real code "as if on CUDA" with a CPU-only torch: a fake GPU in a fake world.

What it is for: on CPU every tensor shares one device, so the CPU suite cannot see device bugs (a
CPU batch handed to a CUDA model, a CPU tensor in an NCCL all-reduce). Under :func:`fake_gpu`

* every CUDA placement (``device="cuda"``, ``torch.device("cuda", i)``, an int device, ``.cuda()``,
  ``.to("cuda")``, ``torch.cuda.current_device()``, ...) lands on :data:`DEVICE_TYPE`, PyTorch's
  spare device slot (PrivateUse1) registered from Python under our own name. The name ``cuda``
  itself cannot be used on a CPU-only wheel (its bindings initialise CUDA), and the meta device
  would hide the bugs (a CPU index into a meta embedding passes silently);
* ``FakeTensorMode`` runs every op on shapes, dtypes and devices only: no memory is allocated and
  values are fake, so a 7B layer costs nothing, and an op mixing the fake GPU with the CPU raises
  ``FakeTensorDeviceMismatchError`` exactly where a GPU would fail;
* the world is torch's fake process group (``FakeStore`` + backend ``fake``, the pairing torchtitan
  uses for memory estimates): one process poses as rank ``rank`` of ``world_size``, and Megatron's
  TP/PP/CP/DP groups are made on it (:meth:`FakeGPU.initialize_parallel`);
* every collective and p2p op is checked: a tensor that is not on the fake GPU, handed to a group
  that would be NCCL on a GPU machine, raises :class:`CollectiveDeviceError` (NCCL fails there).

Everything patched is restored on exit (torch.cuda, tensor methods, Megatron's RNG tracker and
parallel state, torch.distributed's default world), also when ``megatron_ponder.runtime.cpu``'s
permanent CPU patches are in force in the process: they are set aside while the harness runs (they
would move "cuda" placements back to the CPU and hide exactly the bugs looked for).

Values are fake: ``.item()`` / ``.tolist()`` / ``bool(t)`` return a placeholder (0, or True for
bool tensors, see :func:`_placeholder`), object collectives act as if every rank held this rank's
object, and nothing written from a fake tensor has content. Use it for placement, control flow,
shapes and memory, never numerics.

API (stable; added to, never renamed)::

    with fake_gpu(world_size=8, rank=3) as gpu:       # the fake CUDA device, fake tensors, fake world
        gpu.initialize_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
        ...                                            # build the model as a GPU run does, train
        gpu.collectives                                # [(op name, group size)] issued so far
"""

from __future__ import annotations

import contextlib
import functools
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE_TYPE = "fakegpu"
"""The device type fake-GPU tensors report (``tensor.device.type``)."""

DEVICES_PER_NODE = 8
"""What ``torch.cuda.device_count()`` answers under the harness (an 8-GPU node)."""


class FakeGpuUnavailable(RuntimeError):
    """This torch cannot host the fake GPU (no Python PrivateUse1 registration, or the slot is taken)."""


class CollectiveDeviceError(AssertionError):
    """A collective or p2p op was handed a tensor off the fake GPU on a group that is NCCL on a GPU run."""


# ---------------------------------------------------------------------------------------------
# The device: PrivateUse1 under our name (once per process; torch cannot undo it, and nothing
# else in the process uses the slot).


class _FakeGpuModule(types.ModuleType):
    """``torch.fakegpu``: the device module torch asks about a PrivateUse1 device (AMP, RNG, counts)."""

    def __init__(self):
        super().__init__(DEVICE_TYPE)
        self.current_index = 0
        # Only inside fake_gpu(): the registration outlives it (torch cannot undo it), and code run
        # later in the process asks whether a PrivateUse1 device exists (torch.distributed.checkpoint
        # then streams through the device's current_stream, which this module does not have).
        self.active = False

    def is_available(self) -> bool:
        return self.active

    def is_initialized(self) -> bool:
        return True

    def _lazy_init(self) -> None:
        pass

    def current_device(self) -> int:
        return self.current_index

    def device_count(self) -> int:
        return DEVICES_PER_NODE

    def _is_in_bad_fork(self) -> bool:
        return False

    def manual_seed_all(self, seed: int) -> None:
        pass

    def synchronize(self, device=None) -> None:
        pass

    def get_amp_supported_dtype(self) -> List[torch.dtype]:
        return [torch.float16, torch.bfloat16]


_MODULE: Optional[_FakeGpuModule] = None


def register_fake_gpu_device() -> None:
    """Register :data:`DEVICE_TYPE` as PrivateUse1 (idempotent; irreversible, as torch allows it once).

    Besides the name and the device module, autograd needs a device guard for the device (its
    engine asks one for streams when it records an op): ``torch._C._acc`` registers a Python one.
    """
    global _MODULE
    if _MODULE is not None:
        return
    name = torch._C._get_privateuse1_backend_name()
    if name not in ("privateuseone", DEVICE_TYPE):
        raise FakeGpuUnavailable(f"PrivateUse1 is already registered as {name!r} in this process")
    acc = getattr(torch._C, "_acc", None)
    if acc is None or not hasattr(acc, "register_python_privateuseone_device_guard"):
        raise FakeGpuUnavailable(f"torch {torch.__version__} has no Python PrivateUse1 device guard (torch._C._acc)")

    class _Hooks(acc.PrivateUse1Hooks):
        def is_available(self) -> bool:
            return _MODULE is not None and _MODULE.active

        def has_primary_context(self, device_index) -> bool:
            return True

        def is_built(self) -> bool:
            return True

    class _Guard(acc.DeviceGuard):
        def type_(self):
            return torch._C._autograd.DeviceType.PrivateUse1

    if name == "privateuseone":
        torch.utils.rename_privateuse1_backend(DEVICE_TYPE)
    module = _FakeGpuModule()
    torch._register_device_module(DEVICE_TYPE, module)
    if not hasattr(torch.Tensor, DEVICE_TYPE):
        torch.utils.generate_methods_for_privateuse1_backend()
    # Kept alive here: the C++ side holds plain pointers to these Python objects.
    module._hooks, module._guard = _Hooks(), _Guard()
    acc.register_python_privateuseone_hook(module._hooks)
    acc.register_python_privateuseone_device_guard(module._guard)
    _MODULE = module


def fake_device(index: Optional[int] = None) -> torch.device:
    """The fake GPU ``index`` (default: the current one, as ``torch.cuda.current_device()``)."""
    return torch.device(DEVICE_TYPE, _MODULE.current_index if index is None else index)


def _as_fake_device(device) -> Any:
    """``device`` with CUDA (and bare int indices, which mean the accelerator) mapped to the fake GPU."""
    if isinstance(device, torch.device) and device.type == "cuda":
        return fake_device(device.index)
    if isinstance(device, str) and device.startswith("cuda"):
        return fake_device(torch.device(device).index)
    if isinstance(device, int) and not isinstance(device, bool):
        return fake_device(device)
    return device


# ---------------------------------------------------------------------------------------------
# Patches with exact restore.

_MISSING = object()


class _Patches:
    """``setattr`` that remembers what was there (or that nothing was) and undoes it in reverse."""

    def __init__(self):
        self._undo: List[Tuple[Any, str, Any]] = []

    def set(self, owner, name: str, value) -> None:
        self._undo.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


class _NoStream:
    """Stand-in for ``torch.cuda.Stream``/``Event``: fake work needs no ordering."""

    def __init__(self, *args, **kwargs):
        self.device = fake_device()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


def _device_properties(device=None):
    return types.SimpleNamespace(name="fake H100 80GB", major=9, minor=0, total_memory=80 * 2**30,
                                 multi_processor_count=132)


def _cuda_stand_ins() -> Dict[str, Any]:
    """``torch.cuda.<name>`` replacements: the answers of one H100 per rank, no real CUDA call."""
    module = _MODULE

    def set_device(device) -> None:
        module.current_index = device if isinstance(device, int) else (torch.device(device).index or 0)

    # A function object per name: torch._dynamo's rule map refuses one object under two names.
    nothing = lambda: lambda *args, **kwargs: None  # noqa: E731
    zero = lambda: lambda *args, **kwargs: 0  # noqa: E731
    return dict(
        is_available=lambda: True, is_initialized=lambda: True, _lazy_init=nothing,
        device_count=lambda: DEVICES_PER_NODE, current_device=lambda: module.current_index, set_device=set_device,
        synchronize=nothing(), empty_cache=nothing(), ipc_collect=nothing(),
        Stream=_NoStream, Event=_NoStream, current_stream=lambda *a, **k: _NoStream(),
        default_stream=lambda *a, **k: _NoStream(), stream=lambda *a, **k: contextlib.nullcontext(),
        get_rng_state=lambda *a, **k: torch.zeros(16, dtype=torch.uint8), set_rng_state=nothing(),
        manual_seed=nothing(), manual_seed_all=nothing(), seed=nothing(), initial_seed=zero(),
        get_device_capability=lambda *a, **k: (9, 0), get_device_properties=_device_properties,
        get_device_name=lambda *a, **k: _device_properties().name, is_bf16_supported=lambda *a, **k: True,
        memory_allocated=zero(), max_memory_allocated=zero(), memory_reserved=zero(), max_memory_reserved=zero(),
        reset_peak_memory_stats=nothing(), reset_max_memory_allocated=nothing(),
        memory_stats=lambda *a, **k: {},  # no allocator: the training log's memory figures read 0
    )


def _cuda_type_name(self, dtype=None, non_blocking=False, **kwargs):
    """``Tensor.type()`` naming fake-GPU tensors ``torch.cuda.*`` (Megatron's optimizer asserts
    ``param.type() == 'torch.cuda.FloatTensor'``); CPU tensors keep their CPU names, so a CPU
    parameter is still refused there."""
    if dtype is not None or kwargs:
        return torch._C.TensorBase.type(self, dtype, non_blocking, **kwargs)
    name = torch._C.TensorBase.type(self)
    prefix = f"torch.{DEVICE_TYPE}."
    return "torch.cuda." + name[len(prefix):] if name.startswith(prefix) else name


def _tensor_cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    """``Tensor.cuda()``: a copy on the fake GPU (the C++ method would initialise real CUDA)."""
    return self.to(_as_fake_device(device) if device is not None else fake_device(),
                   non_blocking=non_blocking, memory_format=memory_format)


def _swap_tensors_for(fake_mode: FakeTensorMode, original: Callable) -> Callable:
    """``torch.utils.swap_tensors`` that first drops FakeTensorMode's weak memo of both tensors.

    ``nn.Module._apply`` (``model.cuda()``) swaps fake parameters with their moved copies, and
    ``swap_tensors`` refuses tensors that have weak references; the fake mode keeps one to every
    tensor it made (a cache, not needed for correctness).
    """
    memo = fake_mode.fake_tensor_converter.meta_converter.tensor_memo

    @functools.wraps(original)
    def swap_tensors(t1, t2):
        for key in [key for key, value in list(memo.items()) if value is t1 or value is t2]:
            memo.pop(key, None)
        return original(t1, t2)

    return swap_tensors


# Factories runtime/cpu.py wraps to send "cuda" to the CPU; under the harness torch's own run.
_CPU_WRAPPED_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
    "eye", "linspace", "zeros_like", "ones_like", "empty_like", "full_like",
)


def _build_dynamo_rules_first() -> None:
    """torch._dynamo caches, once per process, a map from torch's functions (torch.cuda.* among
    them) to tracing rules; built while our stand-ins are in place (Megatron's ``jit_fuser`` runs
    torch.compile at import) it would keep them for good. Build it from torch's own functions."""
    try:
        from torch._dynamo import trace_rules
    except ImportError:
        return
    trace_rules.get_torch_obj_rule_map()


def _patch_cuda(patches: _Patches, fake_mode: FakeTensorMode) -> None:
    _build_dynamo_rules_first()
    for name, value in _cuda_stand_ins().items():
        patches.set(torch.cuda, name, value)
    for name in _CPU_WRAPPED_FACTORIES:  # undo runtime/cpu.py's wrappers while we run
        current = getattr(torch, name)
        if hasattr(current, "__wrapped__"):
            patches.set(torch, name, current.__wrapped__)
    patches.set(torch.Tensor, "cuda", _tensor_cuda)
    patches.set(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)  # see _CudaToFakeGpu
    patches.set(torch.Tensor, "type", _cuda_type_name)
    patches.set(torch.Tensor, "is_cuda", property(lambda self: self.device.type in ("cuda", DEVICE_TYPE)))
    patches.set(torch.utils, "swap_tensors", _swap_tensors_for(fake_mode, torch.utils.swap_tensors))


def _patch_megatron_rng(patches: _Patches) -> None:
    """Megatron's CUDA RNG tracker over no generator: random ops on fake tensors draw nothing."""
    try:
        from megatron.core.tensor_parallel import random as mcore_random
    except ImportError:  # the harness also serves code without Megatron
        return

    class FakeGpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
        """The tracker's API with states that are only names (fake tensors have no values to draw)."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise ValueError(f"RNG seed {seed} already registered")
            if name in self.states_:
                raise ValueError(f"RNG state {name!r} already registered")
            self._is_initialized = True
            self.seeds_.add(seed)
            self.states_[name] = seed

        @contextlib.contextmanager
        def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise KeyError(f"RNG state {name!r} was never added")
            yield

    patches.set(mcore_random, "CudaRNGStatesTracker", FakeGpuRNGStatesTracker)
    patches.set(mcore_random, "_CUDA_RNG_STATE_TRACKER", FakeGpuRNGStatesTracker())
    patches.set(mcore_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", True)
    patches.set(mcore_random, "_get_cuda_rng_state", lambda *a, **k: torch.zeros(16, dtype=torch.uint8))
    patches.set(mcore_random, "_set_cuda_rng_state", lambda *a, **k: None)


@contextlib.contextmanager
def _megatron_globals_kept() -> Iterator[None]:
    """Megatron's parallel state (groups, global buffers) as it was before, afterwards."""
    try:
        from megatron.core import parallel_state
    except ImportError:
        yield
        return
    saved = {name: value for name, value in vars(parallel_state).items()
             if name.startswith("_") and not name.startswith("__") and not callable(value)}
    try:
        yield
    finally:
        vars(parallel_state).update(saved)


# ---------------------------------------------------------------------------------------------
# CUDA placements -> fake GPU, and the checks at the dispatcher.

_TO_METHODS = {torch.Tensor.to, torch._C.TensorBase.to}
_FROM_DATA = {torch.tensor, torch.as_tensor}


def _scalars_of(data):
    """Nested lists with every tensor replaced by its (placeholder) value: torch reads tensors
    inside Python data below the fake mode, where a fake tensor has no value to read."""
    if isinstance(data, torch.Tensor):
        return data.tolist()
    if isinstance(data, (list, tuple)):
        return [_scalars_of(item) for item in data]
    return data


class _FakeMode(FakeTensorMode):
    """FakeTensorMode that never runs a real kernel on the fake GPU.

    FakeTensorMode keeps the values of small tensors made from Python data (``torch.tensor([1.0])``)
    and runs ops on them for real ("constant propagation"), except moves to a device it believes
    absent. With ``torch.cuda.is_available()`` answering True it would copy such a constant to the
    fake GPU for real, which has no kernels; so the device is always treated as absent.
    """

    @property
    def avoid_device_init(self) -> bool:
        return True


class _CudaToFakeGpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch function to the fake GPU before its binding
    runs (bindings initialise CUDA for a ``cuda`` device before dispatch, failing on a CPU wheel)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.device:  # torch.device("cuda", 1) is the fake GPU 1
            return _as_fake_device(func(*args, **(kwargs or {})))
        kwargs = dict(kwargs or {})
        kwargs.pop("pin_memory", None)  # pinned host memory is speed, not placement (and needs a real allocator)
        if "device" in kwargs:
            kwargs["device"] = _as_fake_device(kwargs["device"])
        if func in _FROM_DATA and args and isinstance(args[0], (list, tuple)):
            args = (_scalars_of(args[0]),) + tuple(args[1:])  # on the host unless a device is named, as torch
        if func in _TO_METHODS and len(args) > 1:  # tensor.to("cuda") / tensor.to(0)
            args = (args[0], _as_fake_device(args[1])) + tuple(args[2:])
        else:
            args = tuple(_as_fake_device(a) if isinstance(a, (torch.device, str)) else a for a in args)
        return func(*args, **kwargs)


def _placeholder(dtype: torch.dtype):
    """The value ``.item()`` gives for a fake tensor: True for bool (checks pass: "finite", "all
    agree"), else 0 (no inf found, zero loss); values are never meant to be read."""
    if dtype == torch.bool:
        return True
    return 0.0 if dtype.is_floating_point or dtype.is_complex else 0


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


# c10d ops that carry no caller data (barrier's tensor is made by the backend itself).
_UNCHECKED_C10D = {"barrier", "monitored_barrier"}
# Coalesced c10d ops (DDP's bucketed reductions) have no fake kernel in torch: after the check
# they return a finished Work without running (the others get torch's own Meta kernels).
_COALESCED_C10D = {"allreduce_coalesced_", "allgather_coalesced_", "allgather_into_tensor_coalesced_",
                   "reduce_scatter_tensor_coalesced_"}


class _Checks(TorchDispatchMode):
    """Under the fake mode: placeholder scalars, and the device check of every c10d op.

    ``host_groups``: names of groups a GPU run makes with gloo (Megatron's ``*_GLOO`` groups),
    which take CPU tensors legitimately. ``collectives``: (op, group size) of every c10d op seen.
    """

    def __init__(self):
        super().__init__()
        self.host_groups: Set[str] = set()
        self.collectives: List[Tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and getattr(args[0], "constant", None) is None:
            # (The fake mode tracks the real value of small host tensors made from Python numbers,
            # e.g. torch.optim.Adam's step count, and reads that instead.)
            return _placeholder(args[0].dtype)
        if func.namespace == "c10d":
            self._check(func, args, kwargs)
            if func.__name__.split(".")[0] in _COALESCED_C10D:
                from torch._C._distributed_c10d import FakeWork

                return FakeWork().boxed()
        return func(*args, **kwargs)

    def _check(self, func, args, kwargs) -> None:
        op = func.__name__.split(".")[0]
        groups = [dist.ProcessGroup.unbox(a) for a in list(args) + list(kwargs.values())
                  if isinstance(a, torch.ScriptObject) and "ProcessGroup" in str(a._type())]
        group = groups[0] if groups else None
        size = group.size() if group is not None else 0
        self.collectives.append((op, size))
        if op in _UNCHECKED_C10D or (group is not None and group.group_name in self.host_groups):
            return
        for tensor in _tensors(list(args) + list(kwargs.values())):
            if tensor.device.type != DEVICE_TYPE:
                raise CollectiveDeviceError(
                    f"{op} on a group of {size} ranks got a tensor on {tensor.device} "
                    f"(shape {tuple(tensor.shape)}, {tensor.dtype}): NCCL reduces GPU tensors only; "
                    "allocate it on torch.cuda.current_device()"
                )


# ---------------------------------------------------------------------------------------------
# The world.

_C10D_STATE = ("_pg_map", "_pg_names", "_pg_group_ranks", "_pg_backend_config", "_tags_to_pg", "_pg_to_tag")
_BACKEND = f"cpu:fake,cuda:fake,{DEVICE_TYPE}:fake"  # every device's collectives on the fake backend


@contextlib.contextmanager
def _real_world_set_aside() -> Iterator[None]:
    """A process group already started in this process (e.g. the tests' gloo world of one) is put
    aside for the fake world and put back afterwards, with its names still registered."""
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        try:
            yield
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return
    missing = [name for name in _C10D_STATE if not hasattr(c10d, name)]
    if missing:
        raise FakeGpuUnavailable(f"cannot set aside the running process group on torch {torch.__version__} "
                                 f"(no {missing}): run the fake GPU in a fresh process")
    saved = {name: getattr(c10d, name) for name in _C10D_STATE}
    saved_world = (c10d._world.default_pg, c10d._world._pg_coalesce_state, c10d._world._comms, c10d._group_count)
    for name in _C10D_STATE:
        setattr(c10d, name, {})
    c10d._world.default_pg, c10d._world._pg_coalesce_state, c10d._world._comms = None, {}, []
    try:
        yield
    finally:
        for name in list(c10d._pg_names.values()):  # the fake groups only: keep the real names
            c10d._unregister_process_group(name)
        for name, value in saved.items():
            setattr(c10d, name, value)
        c10d._world.default_pg, c10d._world._pg_coalesce_state, c10d._world._comms = saved_world[:3]
        c10d._group_count = saved_world[3]


def _object_collectives(rank: int, world_size: int) -> Dict[str, Callable]:
    """Object collectives as if every rank held this rank's object: pickled objects in fake tensors
    have no bytes, and one process cannot know what other ranks would send."""

    def broadcast_object_list(object_list, src=None, group=None, device=None, group_src=None):
        return None

    def all_gather_object(object_list, obj, group=None):
        size = dist.get_world_size(group)
        object_list[:size] = [obj] * size

    def gather_object(obj, object_gather_list=None, dst=None, group=None, group_dst=None):
        if object_gather_list is not None:
            object_gather_list[:] = [obj] * len(object_gather_list)

    def scatter_object_list(scatter_object_output_list, scatter_object_input_list=None, src=None, group=None,
                            group_src=None):
        if scatter_object_input_list:
            scatter_object_output_list[0] = scatter_object_input_list[0]

    return dict(broadcast_object_list=broadcast_object_list, all_gather_object=all_gather_object,
                gather_object=gather_object, scatter_object_list=scatter_object_list)


def _new_group_recording(original: Callable, host_groups: Set[str]) -> Callable:
    """``dist.new_group`` on the fake backend; a group asked for as gloo (a host group on a GPU
    run) is remembered, since CPU tensors are right on it."""

    @functools.wraps(original)
    def new_group(*args, **kwargs):
        backend = kwargs.get("backend")
        host = backend is not None and "gloo" in str(backend).lower()
        if backend is not None:
            kwargs["backend"] = _BACKEND
        kwargs.pop("pg_options", None)  # NCCL options mean nothing to the fake backend
        group = original(*args, **kwargs)
        if host and isinstance(group, dist.ProcessGroup):
            host_groups.add(group.group_name)
        return group

    return new_group


# ---------------------------------------------------------------------------------------------
# The harness.


@dataclass
class FakeGPU:
    """What :func:`fake_gpu` hands out: the device, the fake mode, the world, the collective log."""

    device: torch.device
    fake_mode: FakeTensorMode
    world_size: int
    rank: int
    checks: _Checks

    @property
    def collectives(self) -> List[Tuple[str, int]]:
        """Every c10d op issued so far under the harness: (op name, size of its group)."""
        return self.checks.collectives

    def initialize_parallel(self, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                            context_parallel_size: int = 1, seed: int = 1234) -> None:
        """Megatron's TP/PP/CP/DP groups on the fake world, by the project's own
        ``initialize_parallel`` (the path of a GPU run: the world exists, so it only builds the
        groups and seeds the model-parallel RNG tracker). DP = world / (TP * PP * CP)."""
        from megatron_ponder.runtime.parallel_init import initialize_parallel

        initialize_parallel(tensor_model_parallel_size=tensor_model_parallel_size,
                            pipeline_model_parallel_size=pipeline_model_parallel_size,
                            context_parallel_size=context_parallel_size, seed=seed)


@contextlib.contextmanager
def fake_gpu(world_size: int = 1, rank: int = 0, local_rank: Optional[int] = None) -> Iterator[FakeGPU]:
    """Enter the fake CUDA device, ``FakeTensorMode`` and a fake world of ``world_size`` as ``rank``.

    Inside, ``torch.cuda.is_available()`` is True and the current device is ``local_rank``
    (default ``rank % 8``), so code takes its GPU branches. Tensors made inside are fake;
    ``.item()`` gives placeholders. On exit every patch is undone, the fake world destroyed, a
    world that was running before put back, and Megatron's parallel state restored.
    """
    register_fake_gpu_device()
    patches = _Patches()
    checks = _Checks()
    fake_mode = _FakeMode(allow_non_fake_inputs=True)  # loaders build batches from numpy (real)
    index = rank % DEVICES_PER_NODE if local_rank is None else local_rank
    with contextlib.ExitStack() as stack:
        stack.callback(patches.restore)
        previous_index, previously_active = _MODULE.current_index, _MODULE.active
        _MODULE.current_index, _MODULE.active = index, True
        stack.callback(setattr, _MODULE, "current_index", previous_index)
        stack.callback(setattr, _MODULE, "active", previously_active)
        stack.enter_context(_megatron_globals_kept())
        stack.enter_context(_real_world_set_aside())
        _patch_cuda(patches, fake_mode)
        _patch_megatron_rng(patches)
        from torch.testing._internal.distributed.fake_pg import FakeStore  # registers backend "fake"

        patches.set(dist, "new_group", _new_group_recording(dist.new_group, checks.host_groups))
        for name, function in _object_collectives(rank, world_size).items():
            patches.set(dist, name, function)
        dist.init_process_group(backend=_BACKEND, store=FakeStore(), rank=rank, world_size=world_size)
        # Backward on the calling thread: autograd otherwise runs a device's backward on a thread
        # per device index, made once per process from the device count of that moment (the fake
        # GPU may not exist yet then, and rank r's device is index r % 8).
        stack.enter_context(torch.autograd.set_multithreading_enabled(False))
        stack.enter_context(fake_mode)
        stack.enter_context(checks)
        stack.enter_context(_CudaToFakeGpu())
        yield FakeGPU(device=fake_device(index), fake_mode=fake_mode, world_size=world_size, rank=rank,
                      checks=checks)
