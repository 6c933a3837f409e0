"""DataLoaders: multi-scale batch collation, seeding, distributed sharding, skip counting.

Reproducibility: the loader's generator (seeded with ``seed + rank``) drives shuffling and the base
seed of the workers; each worker reseeds numpy, ``random``, the dataset transforms and the collate
size draw from its own seed, so two runs with the same seed and worker count see the same batches.

Per epoch the trainer calls ``set_loader_epoch(loader, epoch)`` on every rank (it calls the
DistributedSampler's ``set_epoch``), and sums the ``skipped`` field of the batches, e.g. with a
:class:`SkipCounter`, to report the samples dropped for bad files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset, get_worker_info

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

    Drops None samples (bad files) and counts them. Returns ``image`` B×3×S×S, ``mask`` B×1×S×S in
    [0, 1] (``mask_mode`` 'bilinear', official and soft, or 'nearest'), ``name`` and ``size`` lists
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

    def reseed(self, seed: int) -> None:
        """Restart the size draw from ``seed`` (done per worker)."""
        self.generator.manual_seed(seed)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        valid = [sample for sample in samples if sample is not None]
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
        raise ValueError(f"eval images differ in size {sorted(shapes)}: resize them or use batch_size=1")
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


def _leaf_datasets(dataset: Dataset) -> list[Dataset]:
    """The datasets inside ConcatDataset/Subset wrappers (each once)."""
    if isinstance(dataset, ConcatDataset):
        leaves: list[Dataset] = []
        for part in dataset.datasets:
            leaves.extend(leaf for leaf in _leaf_datasets(part) if all(leaf is not seen for seen in leaves))
        return leaves
    if isinstance(dataset, Subset):
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def seed_transforms(dataset: Dataset, seed: int) -> None:
    """Reseed the random transforms of every dataset inside ``dataset``."""
    for leaf in _leaf_datasets(dataset):
        transform = getattr(leaf, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


class WorkerInit:
    """``worker_init_fn``: one OpenCV thread per worker, and per-worker seeds for the transforms and the
    collate size draw (the DataLoader itself seeds torch, numpy and ``random`` in each worker)."""

    def __init__(self, collate: MultiScaleCollate | None = None) -> None:
        self.collate = collate

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        seed = info.seed % 2**32  # the loader's base seed + worker_id
        # 0 = run OpenCV sequentially. Not 1: resizing the thread pool inherited by a forked worker
        # deadlocks when the parent has already used it.
        cv2.setNumThreads(0)
        seed_transforms(info.dataset, seed)
        if self.collate is not None:
            self.collate.reseed(seed)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Call at the start of every epoch on every rank: reshuffles a DistributedSampler's shard."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


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
    """Shuffled training loader with multi-scale collation.

    ``distributed`` shards the data with a DistributedSampler (``world_size``/``rank`` default to
    the initialised process group's); call :func:`set_loader_epoch` every epoch. ``pin_memory``
    defaults to whether CUDA is available. Reseeds the dataset's transforms with ``seed + rank``.
    """
    rank_seed = seed + (rank or 0)
    sampler = None
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        rank_seed = seed + sampler.rank
    collate = MultiScaleCollate(sizes, mask_mode=mask_mode, seed=rank_seed)
    seed_transforms(dataset, rank_seed)  # used as is when num_workers=0; workers reseed their copies
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=WorkerInit(collate),
        generator=torch.Generator().manual_seed(rank_seed),
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
        worker_init_fn=WorkerInit(),
        persistent_workers=False,
    )
