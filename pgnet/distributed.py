"""Process-group helpers for DDP runs launched by torchrun (single-process runs need none of it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (a copy; the input is unchanged)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / info.world_size


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def every_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``flag`` holds on every process (``flag`` itself for a single process)."""
    if not info.enabled:
        return flag
    missing = torch.tensor(0.0 if flag else 1.0, device=device)
    return all_reduce_sum(missing, info).item() == 0


def broadcast_object(value, info: DistInfo):
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
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
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shards_disjoint(shard: list[int], info: DistInfo) -> bool:
    """Whether the ranks' ``shard`` index lists are disjoint (checks the sharding)."""
    if not info.enabled:
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
    if not info.enabled:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().cpu()
    gathered = [torch.zeros_like(checksum) for _ in range(info.world_size)]
    dist.all_gather(gathered, checksum)
    return all(g.item() == checksum.item() for g in gathered)
