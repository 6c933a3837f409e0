"""DataLoaders: multi-scale batch collation, seeding, distributed sharding, skip counting.

Reproducibility: training batches come from a :class:`~pgnet.data.sampler.ResumableBatchSampler`,
which shards the data over ranks like a DistributedSampler and derives the order, each batch's size
and each sample's augmentation seed from (seed, epoch, position). The stream of batches therefore
does not depend on the number of workers, and an epoch can be resumed at any batch. The loader's
seeded generator sets the workers' torch, numpy and ``random`` seeds for any other randomness.

Per epoch the trainer calls ``set_loader_epoch(loader, epoch, start_batch)`` on every rank (the
sampler's ``set_epoch``), and sums the ``skipped`` field of the batches, e.g. with a
:class:`SkipCounter`, to report the samples dropped for bad files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, Dataset

from pgnet.data.sampler import ResumableBatchSampler, SeededSamples
from pgnet.errors import UserError

DEFAULT_TRAIN_SIZES: tuple[int, ...] = (960, 992, 1024, 1056, 1088)
_MASK_MODES = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def _resize_batch(tensors: Sequence[torch.Tensor], size: int, interpolation: int) -> torch.Tensor:
    """C×H×W tensors (sizes may differ) -> B×C×size×size, resized plane by plane with OpenCV
    (several times faster than F.interpolate on CPU; bilinear uses the same half-pixel centres)."""
    batch = torch.empty(len(tensors), tensors[0].shape[0], size, size, dtype=tensors[0].dtype)
    out = batch.numpy()
    for index, tensor in enumerate(tensors):
        planes = tensor.numpy()
        for channel in range(planes.shape[0]):
            if planes.shape[1:] == (size, size):
                out[index, channel] = planes[channel]
            else:
                cv2.resize(planes[channel], (size, size), dst=out[index, channel], interpolation=interpolation)
    return batch


class MultiScaleCollate:
    """Collate training samples at one size per batch drawn from ``sizes``.

    Samples tagged with ``target_size`` (by the resumable sampler) fix the size of their batch;
    otherwise it is drawn. Drops None samples (bad files) and counts them. Returns ``image``
    B×3×S×S, ``mask`` B×1×S×S in [0, 1] (``mask_mode`` 'bilinear', official and soft, or 'nearest'), ``name`` and ``size`` lists
    and ``skipped`` (int). A batch whose samples were all dropped has B = 0.
    """

    def __init__(self, sizes: Sequence[int] = DEFAULT_TRAIN_SIZES, mask_mode: str = "bilinear", seed: int = 0) -> None:
        if not sizes:
            raise ValueError("MultiScaleCollate needs at least one size")
        if mask_mode not in _MASK_MODES:
            raise ValueError(f"mask_mode must be one of {list(_MASK_MODES)}, got {mask_mode!r}")
        self.sizes = tuple(int(size) for size in sizes)
        self.mask_mode = mask_mode
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        valid = [sample for sample in samples if sample is not None]
        if valid and "target_size" in valid[0]:
            size = int(valid[0]["target_size"])
        else:
            size = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=self.generator))]
        batch: dict[str, Any] = {"name": [s["name"] for s in valid], "size": [s["size"] for s in valid]}
        if valid:
            batch["image"] = _resize_batch([s["image"] for s in valid], size, cv2.INTER_LINEAR)
            batch["mask"] = _resize_batch([s["mask"] for s in valid], size, _MASK_MODES[self.mask_mode]).clamp_(0, 1)
        else:
            batch["image"] = torch.empty(0, 3, size, size)
            batch["mask"] = torch.empty(0, 1, size, size)
        batch["skipped"] = len(samples) - len(valid)
        return batch


def collate_eval(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Collate evaluation samples: ``image`` B×3×S×S stacked, ``mask`` a list of 1×H×W tensors at
    each sample's original size, ``name`` and ``size`` lists, ``skipped`` (int)."""
    valid = [sample for sample in samples if sample is not None]
    shapes = {tuple(s["image"].shape) for s in valid}
    if len(shapes) > 1:
        raise UserError(f"eval images differ in size {sorted(shapes)}: resize them or use batch_size=1")
    return {
        "image": torch.stack([s["image"] for s in valid]) if valid else torch.empty(0, 3, 0, 0),
        "mask": [s["mask"] for s in valid],
        "name": [s["name"] for s in valid],
        "size": [s["size"] for s in valid],
        "skipped": len(samples) - len(valid),
    }


class SkipCounter:
    """Sums the ``skipped`` field of batches; ``reset()`` returns the count and starts over."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, batch: dict[str, Any]) -> None:
        self.count += int(batch.get("skipped", 0))

    def reset(self) -> int:
        count, self.count = self.count, 0
        return count


def init_worker(worker_id: int) -> None:
    """``worker_init_fn``: OpenCV runs sequentially in each worker.

    Seeds need nothing here: training samples carry their own augmentation seeds (see
    :class:`~pgnet.data.sampler.SeededSamples`), and the DataLoader seeds torch, numpy and ``random``.
    """
    # 0 = run OpenCV sequentially. Not 1: resizing the thread pool inherited by a forked worker
    # deadlocks when the parent has already used it.
    cv2.setNumThreads(0)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Call at the start of every epoch on every rank: selects the epoch's shard and order, and the
    batch to start from (to resume in the middle of an epoch)."""
    sampler = loader.batch_sampler
    if isinstance(sampler, ResumableBatchSampler):
        sampler.set_epoch(epoch, start_batch)
    elif start_batch:
        raise ValueError("this loader cannot start in the middle of an epoch")


def _worker_options(num_workers: int, prefetch_factor: int) -> dict[str, Any]:
    if num_workers == 0:
        return {}
    return {"persistent_workers": True, "prefetch_factor": prefetch_factor}


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 4,
    seed: int = 0,
    distributed: bool = False,
    sizes: Sequence[int] = DEFAULT_TRAIN_SIZES,
    *,
    mask_mode: str = "bilinear",
    pin_memory: bool | None = None,
    drop_last: bool = True,
    prefetch_factor: int = 2,
    world_size: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """Shuffled, resumable training loader with multi-scale collation.

    ``distributed`` shards the data over ranks (``world_size``/``rank`` default to the initialised
    process group's); call :func:`set_loader_epoch` every epoch on every rank. ``pin_memory``
    defaults to whether CUDA is available.
    """
    if distributed:
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
        rank = torch.distributed.get_rank() if rank is None else rank
    else:
        world_size, rank = 1, 0
    batch_sampler = ResumableBatchSampler(
        len(dataset), batch_size, sizes, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    collate = MultiScaleCollate(sizes, mask_mode=mask_mode, seed=seed + rank)
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=init_worker,
        generator=torch.Generator().manual_seed(seed + rank),
        **_worker_options(num_workers, prefetch_factor),
    )


def build_eval_loader(
    dataset: Dataset,
    batch_size: int = 1,
    num_workers: int = 2,
    *,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Sequential evaluation loader (see :func:`collate_eval` for the batch layout)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=init_worker,
        persistent_workers=False,
    )
