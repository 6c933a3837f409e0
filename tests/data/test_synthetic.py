"""Synthetic samples: deterministic, varied (several objects, holes, thin parts), any size."""

import cv2
import numpy as np
import pytest
import torch

from pgnet.data.synthetic import SyntheticDataset, make_sample, sample_seed
from pgnet.data.transforms import build_train_transform


def test_same_seed_same_sample_and_seeds_differ():
    image, mask = make_sample(7, 128)
    again_image, again_mask = make_sample(7, 128)
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    other_image, other_mask = make_sample(8, 128)
    assert not np.array_equal(image, other_image) and not np.array_equal(mask, other_mask)


@pytest.mark.parametrize("size", [32, 200, (96, 160), (2160, 3840)])
def test_shapes_types_and_binary_mask(size):
    image, mask = make_sample(3, size)
    height, width = (size, size) if isinstance(size, int) else size
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_one_seed_gives_the_same_scene_at_every_resolution():
    overlaps = []
    for seed in range(10):
        _, small = make_sample(seed, (90, 160))
        _, large = make_sample(seed, (360, 640))
        downsized = cv2.resize(large, (160, 90), interpolation=cv2.INTER_AREA) > 127
        overlaps.append((downsized & (small > 0)).sum() / (downsized | (small > 0)).sum())
    assert np.mean(overlaps) > 0.8  # thin lines keep a 1-px minimum, so not exactly 1


def test_samples_vary_in_objects_holes_and_thin_structures():
    object_counts, with_holes, with_thin_parts, coverage = set(), 0, 0, []
    for seed in range(40):
        image, mask = make_sample(seed, 256)
        count, _ = cv2.connectedComponents(mask)
        object_counts.add(count - 1)
        _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        with_holes += int(hierarchy is not None and (hierarchy[0][:, 3] >= 0).any())  # a contour with a parent
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
        with_thin_parts += int((mask > 0).sum() - (opened > 0).sum() > 0.15 * (mask > 0).sum())
        coverage.append((mask > 0).mean())
        foreground, background = image[mask > 0].mean(axis=0), image[mask == 0].mean(axis=0)
        assert np.abs(foreground - background).max() > 5 or image[mask > 0].std() > 10  # something to see
    assert len(object_counts) >= 3 and max(object_counts) >= 2
    assert with_holes >= 5 and with_thin_parts >= 3
    assert min(coverage) > 0.003 and max(coverage) > 0.1


def test_sample_seeds_are_independent_streams():
    seeds = {sample_seed(0, index) for index in range(100)} | {sample_seed(1, index) for index in range(100)}
    assert len(seeds) == 200


def test_synthetic_dataset_items():
    dataset = SyntheticDataset(n=3, size=(48, 64), seed=2)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["image"].shape == (3, 48, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 48, 64) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["name"] == "synthetic_000001" and item["size"] == (48, 64)
    _, mask = make_sample(sample_seed(2, 1), (48, 64))
    assert torch.equal(item["mask"][0], torch.from_numpy(mask / 255.0).float())
    with pytest.raises(IndexError):
        dataset[3]
    trained = SyntheticDataset(n=2, size=64, seed=0, transform=build_train_transform(size=32))
    assert max(trained[0]["image"].shape[1:]) <= 32


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="synthetic size"):
        make_sample(0, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        SyntheticDataset(n=0)
