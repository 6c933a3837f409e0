"""pgnet.distributed: a torchrun process joins its group at any world size, a plain one joins none,
every collective puts its tensors on the group's device (NCCL refuses CPU tensors), and the helpers
that share prediction and evaluation between processes (``tests/cli/test_distributed_commands.py``
runs the commands in two)."""

import socket

import pytest
import torch
import torch.distributed as dist

from pgnet import distributed
from pgnet.distributed import DistInfo, gather_objects, rank_device, shard_of, stop_together
from pgnet.errors import UserError


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


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_every_item_once(world_size):
    items = [f"p{index}.jpg" for index in range(5)]
    shards = [shard_of(items, DistInfo(rank, world_size)) for rank in range(world_size)]
    assert sorted(item for shard in shards for item in shard) == sorted(items)
    assert [len(shard) for shard in shards] == [len(range(rank, 5, world_size)) for rank in range(world_size)]
    assert shards == [shard_of(items, DistInfo(rank, world_size)) for rank in range(world_size)]  # deterministic


def test_without_a_process_group_everything_stays_in_the_process():
    assert gather_objects({"count": 3}, DistInfo()) == [{"count": 3}]
    with pytest.raises(RuntimeError, match="rank 1 of 2 has not joined the process group"):
        gather_objects(3, DistInfo(1, 2))
    with pytest.raises(UserError, match="bad value"), stop_together(DistInfo()):
        raise UserError("bad value")
    with stop_together(DistInfo()):
        pass


def test_each_process_takes_the_gpu_of_its_local_rank():
    assert rank_device(torch.device("cuda", 0), DistInfo(3, 4, 1, joined=True)) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 0), DistInfo()) == torch.device("cuda", 0)
    assert rank_device(torch.device("cpu"), DistInfo(3, 4, 1, joined=True)) == torch.device("cpu")


def _stop_together_on(rank: int, init_file: str, results: str) -> None:
    """Rank 1 fails inside ``stop_together``; each process records what it raised."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank, 2, joined=True)
    outcome = "nothing"
    try:
        with stop_together(info):
            if rank == 1:
                raise NoSpace("disk full writing out/p1.png")
    except UserError as error:
        outcome = f"{type(error).__name__} {error.exit_status} {error}"
    shards = gather_objects(shard_of(list(range(5)), info), info)
    dist.destroy_process_group()
    with open(f"{results}{rank}", "w") as file:
        file.write(f"{outcome}\n{shards}")


class NoSpace(UserError):
    exit_status = 1


def test_an_error_in_one_process_stops_every_process_alike(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_stop_together_on, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2)
    outcomes = [(tmp_path / f"rank{rank}").read_text().splitlines() for rank in (0, 1)]
    assert outcomes[0][0] == "ProcessFailedError 1 process 1 stopped: disk full writing out/p1.png"
    assert outcomes[1][0] == "NoSpace 1 disk full writing out/p1.png"
    assert outcomes[0][1] == outcomes[1][1] == "[[0, 2, 4], [1, 3]]"
