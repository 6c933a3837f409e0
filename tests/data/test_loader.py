"""Loaders: multi-scale collation, dropped samples counted, seeded reproducibility, distributed shards."""

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pgnet.data.loader import (
    DEFAULT_TRAIN_SIZES,
    MultiScaleCollate,
    SkipCounter,
    build_eval_loader,
    build_train_loader,
    collate_eval,
    set_loader_epoch,
)
from pgnet.data.synthetic import SyntheticDataset
from pgnet.data.transforms import build_eval_transform, build_train_transform


def sample(height: int, width: int, name: str = "x") -> dict:
    mask = torch.zeros(1, height, width)
    mask[:, : height // 2] = 1
    return {"image": torch.randn(3, height, width), "mask": mask, "name": name, "size": (height, width)}


def test_official_sizes():
    assert DEFAULT_TRAIN_SIZES == (960, 992, 1024, 1056, 1088)


def test_multiscale_collate_resizes_each_batch_to_one_drawn_size():
    collate = MultiScaleCollate(sizes=(24, 32, 40), seed=0)
    drawn = set()
    for _ in range(30):
        batch = collate([sample(30, 28, "a"), sample(36, 33, "b")])
        size = batch["image"].shape[-1]
        drawn.add(size)
        assert batch["image"].shape == (2, 3, size, size) and batch["mask"].shape == (2, 1, size, size)
        assert batch["name"] == ["a", "b"] and batch["size"] == [(30, 28), (36, 33)]
        assert batch["skipped"] == 0
        assert 0 <= batch["mask"].min() and batch["mask"].max() <= 1
        assert batch["mask"][:, :, : size // 2 - 1].min() == 1 and batch["mask"][:, :, size // 2 + 1 :].max() == 0
    assert drawn == {24, 32, 40}


def test_collate_resize_matches_bilinear_interpolation():
    item = sample(30, 40)
    batch = MultiScaleCollate(sizes=(50,))([item])
    reference = torch.nn.functional.interpolate(
        item["image"][None], size=(50, 50), mode="bilinear", align_corners=False
    )
    assert torch.allclose(batch["image"], reference, atol=1e-3)


def test_collate_drops_and_counts_bad_samples():
    collate = MultiScaleCollate(sizes=(16,))
    batch = collate([None, sample(20, 20, "ok"), None])
    assert batch["image"].shape == (1, 3, 16, 16) and batch["name"] == ["ok"] and batch["skipped"] == 2
    empty = collate([None, None])
    assert empty["image"].shape == (0, 3, 16, 16) and empty["mask"].shape == (0, 1, 16, 16)
    assert empty["skipped"] == 2
    counter = SkipCounter()
    for result in (batch, empty, collate([sample(8, 8)])):
        counter.update(result)
    assert counter.reset() == 4 and counter.reset() == 0


def test_nearest_mask_mode_keeps_masks_binary():
    item = sample(30, 30)
    item["mask"] = (torch.rand(1, 30, 30) > 0.5).float()
    batch = MultiScaleCollate(sizes=(47,), mask_mode="nearest")([item])
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="mask_mode"):
        MultiScaleCollate(mask_mode="cubic")


def collect(loader, epochs: int = 2) -> list[dict]:
    batches = []
    for epoch in range(epochs):
        set_loader_epoch(loader, epoch)
        batches.extend(loader)
    return batches


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one["name"] == other["name"]
        assert torch.equal(one["image"], other["image"]) and torch.equal(one["mask"], other["mask"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_batches(num_workers):
    # Start OpenCV's thread pool in this process first: forked workers once deadlocked on it.
    cv2.resize(np.zeros((2000, 2000), np.float32), (1000, 1000))

    def loader(seed: int):
        dataset = SyntheticDataset(n=8, size=48, seed=0, transform=build_train_transform("augmented", size=32))
        loader = build_train_loader(dataset, batch_size=2, num_workers=num_workers, seed=seed, sizes=(24, 28, 32))
        if num_workers:
            loader.timeout = 60  # fail instead of hanging
        return loader

    first, second, other = collect(loader(5)), collect(loader(5)), collect(loader(6))
    assert_same_batches(first, second)
    assert [b["name"] for b in first] != [b["name"] for b in other]
    shapes = {b["image"].shape[-1] for b in first}
    assert len(shapes) > 1  # the multi-scale draw happened
    # each epoch shuffles anew
    assert [b["name"] for b in first[:4]] != [b["name"] for b in first[4:]]


def test_workers_do_not_repeat_each_others_augmentations():
    dataset = SyntheticDataset(n=1, size=48, seed=0, transform=build_train_transform("augmented", size=32))

    class Repeated(Dataset):
        transform = dataset.transform

        def __len__(self):
            return 8

        def __getitem__(self, index):
            return dataset[0]

    batches = list(build_train_loader(Repeated(), batch_size=1, num_workers=2, seed=0, sizes=(32,)))
    worker0, worker1 = batches[0::2], batches[1::2]  # batches alternate between the two workers
    assert not torch.equal(worker0[0]["image"], worker1[0]["image"])


def test_distributed_shards_are_disjoint_and_cover_the_data():
    dataset = SyntheticDataset(n=30, size=16, seed=0)
    shards = []
    for rank in range(3):
        loader = build_train_loader(
            dataset, batch_size=2, num_workers=0, seed=1, distributed=True, world_size=3, rank=rank
        )
        set_loader_epoch(loader, 0)
        shards.append([request.index for batch in loader.batch_sampler for request in batch])
        assert loader.batch_sampler.rank == rank and loader.batch_sampler.world_size == 3
    assert all(len(shard) == 10 for shard in shards)
    assert set().union(*map(set, shards)) == set(range(30)) and sum(len(set(s)) for s in shards) == 30
    set_loader_epoch(loader, 1)
    assert [r.index for batch in loader.batch_sampler for r in batch] != shards[2]  # set_epoch reshuffles


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_resumed_at_a_batch_sees_the_same_batches(num_workers):
    dataset = SyntheticDataset(n=12, size=48, seed=0, transform=build_train_transform("augmented", size=32))

    def batches(start_batch: int) -> list[dict]:
        loader = build_train_loader(dataset, batch_size=2, num_workers=num_workers, seed=3, sizes=(24, 28, 32))
        set_loader_epoch(loader, 1, start_batch=start_batch)
        return list(loader)

    whole = batches(0)
    assert len(whole) == 6 and len({b["image"].shape[-1] for b in whole}) > 1
    assert_same_batches(whole[4:], batches(4))


def test_batches_do_not_depend_on_the_number_of_workers():
    dataset = SyntheticDataset(n=8, size=48, seed=0, transform=build_train_transform("augmented", size=32))
    loaders = [build_train_loader(dataset, batch_size=2, num_workers=w, seed=1, sizes=(24, 32)) for w in (0, 2)]
    assert_same_batches(collect(loaders[0]), collect(loaders[1]))


def test_eval_loader_keeps_original_masks():
    dataset = SyntheticDataset(n=3, size=(40, 56), seed=0, transform=build_eval_transform(32))
    batches = list(build_eval_loader(dataset, batch_size=2, num_workers=0))
    assert [b["image"].shape for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert batches[0]["mask"][0].shape == (1, 40, 56) and batches[0]["size"] == [(40, 56), (40, 56)]
    assert batches[0]["name"] == ["synthetic_000000", "synthetic_000001"] and batches[0]["skipped"] == 0
    mixed = collate_eval([None, sample(10, 12)])
    assert mixed["skipped"] == 1 and mixed["mask"][0].shape == (1, 10, 12)
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_eval([sample(10, 12), sample(12, 12)])
