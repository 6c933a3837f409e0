"""The helpers that share prediction and evaluation between torchrun's processes, in one process
(``tests/cli/test_distributed_commands.py`` runs them in two)."""

from __future__ import annotations

import pytest
import torch

from pgnet.distributed import DistInfo, gather_objects, rank_device, shard_of, stop_together
from pgnet.errors import UserError


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
    assert rank_device(torch.device("cuda", 0), DistInfo(3, 4, 1)) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 0), DistInfo()) == torch.device("cuda", 0)
    assert rank_device(torch.device("cpu"), DistInfo(3, 4, 1)) == torch.device("cpu")


def _stop_together_on(rank: int, init_file: str, results: str) -> None:
    """Rank 1 fails inside ``stop_together``; each process records what it raised."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank, 2)
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
