"""A training batch sampler that makes every random choice a function of (seed, epoch, position).

Each epoch is a permutation drawn from (seed, epoch), sharded over ranks like DistributedSampler.
Every batch carries its multi-scale size, and every sample its own augmentation seed, both derived
from (seed, epoch, position). So the stream of training batches does not depend on the number of
workers or on which worker loads what, and an epoch can start at any batch: a run resumed in the
middle of an epoch sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset


class SampleRequest(NamedTuple):
    index: int  # dataset index
    seed: int  # augmentation seed of this sample
    size: int  # training size of the batch it belongs to


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed from integers (stable across processes and Python runs)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


class ResumableBatchSampler(Sampler[list[SampleRequest]]):
    """Shuffled, sharded batches of ``SampleRequest``; ``set_epoch`` and ``start_batch`` pick where.

    ``len()`` is the number of batches of a whole epoch on this rank; ``drop_last`` drops an
    incomplete last batch. Every rank gets the same number of samples (the tail of the permutation
    that does not divide evenly is left out, as DistributedSampler with ``drop_last``).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        sizes: Sequence[int],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if dataset_size < 1 or batch_size < 1:
            raise ValueError(f"need a non-empty dataset and batch, got {dataset_size} samples, batch {batch_size}")
        if not sizes:
            raise ValueError("need at least one training size")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.sizes = [int(s) for s in sizes]
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (call on every rank every epoch) and the batch to start from."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        shard_size = self.dataset_size // self.world_size
        if self.drop_last:
            return shard_size // self.batch_size
        return -(-shard_size // self.batch_size)

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices for ``epoch``, in order."""
        order = np.random.default_rng(derived_seed(self.seed, epoch)).permutation(self.dataset_size)
        usable = (self.dataset_size // self.world_size) * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        shard = self.shard(self.epoch)
        for batch in range(self.start_batch, len(self)):
            size = self.sizes[derived_seed(self.seed, self.epoch, batch, 1) % len(self.sizes)]
            positions = range(batch * self.batch_size, min((batch + 1) * self.batch_size, len(shard)))
            yield [
                # The sample seed depends on the position in the global order, not on the rank.
                SampleRequest(int(shard[p]), derived_seed(self.seed, self.epoch, p * self.world_size + self.rank), size)
                for p in positions
            ]


class SeededSamples(Dataset):
    """Serves ``SampleRequest``s: reseeds the dataset's transforms with the request's seed, loads the
    sample and tags it with the batch size (``target_size``) for the collate function."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: SampleRequest) -> dict[str, Any] | None:
        seed_transforms(self.dataset, request.seed)
        sample = self.dataset[request.index]
        if sample is not None:
            sample["target_size"] = request.size
        return sample


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
