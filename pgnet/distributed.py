"""The process group torchrun describes, and its collectives.

A process launched by torchrun joins the group at any world size (NCCL on CUDA, gloo otherwise), so a
single GPU runs the NCCL paths too; a plain process has no group and every helper is then a no-op
returning its input. Every collective puts its tensors on the group's device (``DistInfo.device``:
``cuda:LOCAL_RANK`` for NCCL, the CPU for gloo) and checks them there (NCCL refuses CPU tensors).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pgnet.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size``, its local rank on the machine,
    whether it joined a process group (``joined``: launched by torchrun) and the device that group's
    collectives run on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Several processes share the work (DDP, sharded data): world size above 1."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment, at any world size (NCCL on
    CUDA, each process on the GPU of its local rank; gloo otherwise); a plain process joins none."""
    if not launched_by_torchrun():
        return DistInfo()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, joined=True, device=device)


def check_on_group_device(info: DistInfo, *tensors: torch.Tensor) -> None:
    """Refuse a collective whose tensors are not on the group's device (a bug, not a user error)."""
    for tensor in tensors:
        if tensor.device != info.device:
            raise RuntimeError(f"a collective of the process group got a tensor on {tensor.device}; "
                               f"the group's tensors live on {info.device}")


def barrier(info: DistInfo) -> None:
    if info.joined:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (a copy on ``value``'s device; the input is unchanged)."""
    if not info.joined:
        return value
    return all_reduce_sum(value, info) / info.world_size


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over processes (a copy on ``value``'s device; the input is unchanged)."""
    if not info.joined:
        return value
    total = value.detach().to(info.device, copy=True)
    check_on_group_device(info, total)
    dist.all_reduce(total)
    return total.to(value.device)


def every_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on every process (``flag`` itself for a single process)."""
    if not info.joined:
        return flag
    missing = torch.tensor(0.0 if flag else 1.0, device=info.device)
    return all_reduce_sum(missing, info).item() == 0


def broadcast_object(value, info: DistInfo):
    """Rank 0's ``value`` on every rank."""
    if not info.joined:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def cleanup(info: DistInfo, network: torch.nn.Module | None = None) -> None:
    """Leave the process group of a DDP run (nothing for a single process, or when already left).

    ``network``: the run's DDP-wrapped module (or it compiled), whose reducer is freed first; it
    can't train after this. Otherwise the reducer can hold the group's last reference, and freeing it
    later destroys the group with the GIL held: a gloo worker thread that still needs the GIL to free
    the tensors of the last collective then waits on it forever (a hang at exit in 3 of 29
    two-process CPU runs on a loaded machine; none in 40 with the reducer freed first). Freed first,
    the group goes with the registry's reference, whose destructor releases the GIL.
    """
    if network is not None:
        for module in network.modules():
            if isinstance(module, DistributedDataParallel):
                for name in ("logger", "reducer"):  # the logger holds the reducer too
                    module.__dict__.pop(name, None)
    if info.joined and dist.is_initialized():
        dist.destroy_process_group()


def shards_disjoint(shard: list[int], info: DistInfo) -> bool:
    """Whether the ranks' ``shard`` index lists are disjoint (checks the sharding)."""
    if not info.joined:
        return True
    gathered: list[list[int] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, shard)
    seen: set[int] = set()
    for indices in gathered:
        if seen & set(indices):
            return False
        seen |= set(indices)
    return True


def self_checks(model: torch.nn.Module, shard: list[int], info: DistInfo) -> dict[str, bool]:
    """The summary's DDP checks: whether every rank holds the same weights, and whether the ranks'
    ``shard`` index lists are disjoint (both true for a single process)."""
    return {"weights_identical_across_ranks": weights_identical(model, info),
            "shards_disjoint_across_ranks": shards_disjoint(shard, info)}


def weights_identical(model: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds the same weights (compares a float64 checksum exactly)."""
    if not info.joined:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().to(info.device)
    gathered = [torch.zeros_like(checksum) for _ in range(info.world_size)]
    check_on_group_device(info, checksum, *gathered)
    dist.all_gather(gathered, checksum)
    return all(g.item() == checksum.item() for g in gathered)


# --------------------------------------------------------------------------------------------------
# Sharing work between the processes of a torchrun launch (prediction and evaluation).

T = TypeVar("T")


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device this process runs on: under torchrun a CUDA device means the GPU of the local rank
    (``cuda:LOCAL_RANK``), one GPU per process; any other device is kept."""
    if device.type == "cuda" and info.joined:
        return torch.device("cuda", info.local_rank)
    return device


def shard_of(items: Sequence[T], info: DistInfo) -> list[T]:
    """This process's share of ``items``: every ``world_size``-th item from its rank on. The shards of
    the ranks are disjoint and together hold every item once (all of them for a single process)."""
    return list(items[info.rank::info.world_size])


def gather_objects(value: T, info: DistInfo) -> list[T]:
    """Every process's ``value`` (picklable), in rank order, on every process; ``[value]`` without a
    process group."""
    if not info.joined:
        if info.world_size > 1:
            raise RuntimeError(f"rank {info.rank} of {info.world_size} has not joined the process group")
        return [value]
    gathered: list[T | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered  # type: ignore[return-value]


class ProcessFailedError(UserError):
    """Another process of the group stopped with an error: this one stops too, with its message and
    exit status."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@contextlib.contextmanager
def stop_together(info: DistInfo) -> Iterator[None]:
    """Inside, an error on any process stops every process of the group, so none waits forever on a
    collective the failed one never joins: each process raises its own error, and the others raise a
    :class:`ProcessFailedError` with the message and exit status of the lowest failed rank (exit
    status 1 for an error that declares none and is no ``UserError``: a bug). Every process must enter
    and leave the block (it ends with a collective); without a process group it does nothing.
    ``KeyboardInterrupt`` passes through (torchrun stops every process).
    """
    failure: Exception | None = None
    try:
        yield
    except Exception as error:  # told to the other processes, then raised again
        failure = error
    if not info.joined:
        if failure is not None:
            raise failure
        return
    outcome = None
    if failure is not None:
        status = getattr(failure, "exit_status", None)
        if not isinstance(status, int):
            status = 2 if isinstance(failure, UserError) else 1
        outcome = (status, str(failure) if isinstance(failure, UserError) else f"{type(failure).__name__}: {failure}")
    outcomes = gather_objects(outcome, info)
    if failure is not None:
        raise failure
    for rank, other in enumerate(outcomes):
        if other is not None:
            status, message = other
            raise ProcessFailedError(f"process {rank} stopped: {message}", status)
