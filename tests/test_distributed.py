"""pgnet.distributed: a torchrun process joins its group at any world size, a plain one joins none,
and every collective puts its tensors on the group's device (NCCL refuses CPU tensors)."""

import socket

import pytest
import torch
import torch.distributed as dist

from pgnet import distributed
from pgnet.distributed import DistInfo


class _Reached(Exception):
    """Raised by a stand-in collective once it has recorded what it was given."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_every_collective_puts_its_tensors_on_the_groups_device(monkeypatch):
    """A group whose tensors live on another device than the values (as NCCL's on the GPU beside a
    CPU value): each helper hands its collective tensors on the group's device."""
    seen: list[torch.device] = []

    def collective(*arguments, **options):
        tensors = [a for a in arguments if isinstance(a, torch.Tensor)]
        tensors += [t for a in arguments if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
        seen.extend(t.device for t in tensors)
        raise _Reached

    monkeypatch.setattr(dist, "all_reduce", collective)
    monkeypatch.setattr(dist, "all_gather", collective)
    group_device = torch.device("meta")  # any device but the values' CPU
    info = DistInfo(rank=0, world_size=2, joined=True, device=group_device)
    calls = [lambda: distributed.all_reduce_sum(torch.ones(3), info),
             lambda: distributed.all_reduce_mean(torch.ones(3), info),
             lambda: distributed.every_rank(True, info),
             lambda: distributed.weights_identical(torch.nn.Linear(2, 2), info)]
    for call in calls:
        seen.clear()
        with pytest.raises(_Reached):
            call()
        assert seen and all(device == group_device for device in seen), seen
    with pytest.raises(RuntimeError, match="the group's tensors live on meta"):
        distributed.check_on_group_device(info, torch.ones(1))


def test_a_plain_process_joins_no_group_and_the_helpers_return_their_input(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed("cpu")
    assert info == DistInfo() and not info.joined and not dist.is_initialized()
    value = torch.tensor([2.0])
    assert distributed.all_reduce_sum(value, info) is value and distributed.broadcast_object("x", info) == "x"
    assert distributed.self_checks(torch.nn.Linear(2, 2), [0, 1], info) == {
        "weights_identical_across_ranks": True, "shards_disjoint_across_ranks": True}


def test_a_torchrun_process_joins_its_group_even_alone(monkeypatch):
    """World size 1 under torchrun: the group is joined, so the collectives and the DDP self-checks
    run (on a GPU: the NCCL paths), and leaving it works."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    info = distributed.init_distributed("cpu")
    try:
        assert info.joined and dist.is_initialized() and dist.get_world_size() == 1
        assert info.device == torch.device("cpu") and info.is_main and not info.enabled
        distributed.barrier(info)
        assert distributed.all_reduce_sum(torch.tensor([2.0]), info).item() == 2.0
        assert distributed.all_reduce_mean(torch.tensor([3.0]), info).item() == 3.0
        assert distributed.every_rank(True, info) and not distributed.every_rank(False, info)
        assert distributed.broadcast_object({"run": "a"}, info) == {"run": "a"}
        checks = distributed.self_checks(torch.nn.Linear(2, 2), [0, 1, 2], info)
        assert checks == {"weights_identical_across_ranks": True, "shards_disjoint_across_ranks": True}
    finally:
        distributed.cleanup(info)
    assert not dist.is_initialized()
