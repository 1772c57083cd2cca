"""The collective-device check of tools/fake_gpu.py, and that the harness leaves no trace."""

import pytest
import torch
import torch.distributed as dist

from tools.fake_gpu import DEVICE_TYPE, CollectiveDeviceError, fake_gpu

pytestmark = pytest.mark.fake_gpu


def test_a_host_tensor_in_a_collective_fails():
    with fake_gpu(world_size=4, rank=2) as gpu:
        group = dist.new_group([0, 2])
        on_gpu = torch.ones(8, device="cuda")
        assert on_gpu.device.type == DEVICE_TYPE
        dist.all_reduce(on_gpu, group=group)  # a GPU tensor passes
        for collective in (lambda t: dist.all_reduce(t, group=group), lambda t: dist.broadcast(t, 0),
                           lambda t: dist.send(t, 1), lambda t: dist.all_gather_into_tensor(
                               torch.empty(32, device="cuda"), t)):
            with pytest.raises(CollectiveDeviceError, match="cpu"):
                collective(torch.ones(8))
        assert ("allreduce_", 2) in gpu.collectives


def test_host_groups_take_host_tensors():
    """A group asked for as gloo is a host group on a GPU run too (Megatron's *_GLOO groups)."""
    with fake_gpu(world_size=2, rank=0):
        host_group = dist.new_group([0, 1], backend="gloo")
        dist.all_reduce(torch.ones(4), group=host_group)
        with pytest.raises(CollectiveDeviceError):
            dist.all_reduce(torch.ones(4), group=dist.new_group([0, 1]))


def test_cuda_placements_land_on_the_fake_gpu():
    with fake_gpu(world_size=8, rank=3) as gpu:
        assert torch.cuda.is_available() and torch.cuda.current_device() == 3
        made = [torch.zeros(2, device="cuda"), torch.ones(2).cuda(), torch.ones(2).to("cuda"),
                torch.empty(2, device=torch.device("cuda", torch.cuda.current_device())),
                torch.tensor([1.0], device="cuda"), torch.nn.Linear(2, 2).cuda().weight]
        assert [t.device for t in made] == [gpu.device] * len(made)
        assert made[0].type() == "torch.cuda.FloatTensor" and torch.ones(1).type() == "torch.FloatTensor"


def test_everything_is_restored(megatron_world_of_one):
    """The tests' gloo world and torch's own functions are back afterwards, working for real."""
    before = (torch.cuda.is_available(), torch.cuda.current_device, torch.Tensor.cuda, torch.zeros,
              dist.all_reduce, dist.new_group, dist.group.WORLD)
    with fake_gpu(world_size=4, rank=1):
        assert dist.get_world_size() == 4
    after = (torch.cuda.is_available(), torch.cuda.current_device, torch.Tensor.cuda, torch.zeros,
             dist.all_reduce, dist.new_group, dist.group.WORLD)
    assert after == before
    assert dist.get_world_size() == 1 and dist.get_backend() == "gloo"
    value = torch.full((2,), 3.0)
    dist.all_reduce(value)
    assert value.tolist() == [3.0, 3.0]  # a real tensor with real values again


def test_the_fake_device_is_absent_outside_the_harness():
    """torch keeps the PrivateUse1 registration for the process; code after the harness (e.g.
    torch.distributed.checkpoint, which streams through an available accelerator) must not see it."""
    with fake_gpu():
        assert getattr(torch, DEVICE_TYPE).is_available()
    assert not getattr(torch, DEVICE_TYPE).is_available()
