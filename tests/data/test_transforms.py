"""Train/eval transforms: image and mask stay aligned; the official recipe's sizes and statistics."""

import cv2
import numpy as np
import pytest
import torch

from pgnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    PRESETS,
    build_eval_transform,
    build_train_transform,
    denormalize,
)


def red_object_on_blue_clutter(height: int = 160, width: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric red object on a blue-green textured background; the mask is where red wins."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = cv2.resize(rng.integers(0, 120, (6, 6), dtype=np.uint8), (width, height))
    image[..., 2] = cv2.resize(rng.integers(120, 256, (6, 6), dtype=np.uint8), (width, height))
    mask = np.zeros((height, width), np.uint8)
    cv2.rectangle(mask, (20, 15), (60, 140), 255, -1)  # an L: not symmetric under flips or rotations
    cv2.rectangle(mask, (20, 110), (150, 140), 255, -1)
    cv2.circle(mask, (150, 40), 18, 255, -1)
    image[mask > 0] = (230, 30, 20)
    return image, mask


@pytest.mark.parametrize("preset", ["official", "augmented"])
def test_mask_follows_the_image_through_every_transform(preset):
    transform = build_train_transform(preset, size=128, seed=0)
    image, mask = red_object_on_blue_clutter()
    shapes = set()
    for _ in range(30):
        image_tensor, mask_tensor = transform(image, mask)
        assert image_tensor.dtype == torch.float32 and mask_tensor.dtype == torch.float32
        assert image_tensor.shape[1:] == mask_tensor.shape[1:] and mask_tensor.shape[0] == 1
        assert 0 <= mask_tensor.min() and mask_tensor.max() <= 1
        shapes.add(tuple(image_tensor.shape[1:]))
        pixels = denormalize(image_tensor).permute(1, 2, 0).numpy().astype(int)
        red_in_image = pixels[..., 0] > pixels[..., 2]  # drawn from the image content alone
        agreement = (red_in_image == (mask_tensor[0].numpy() > 0.5)).mean()
        assert agreement > 0.97, agreement
    assert len(shapes) > 5  # the random crop varies


def test_official_crop_removes_at_most_an_eighth_of_each_side():
    transform = build_train_transform("official", size=128, seed=1)
    image, mask = red_object_on_blue_clutter()
    heights, widths = set(), set()
    for _ in range(200):
        image_tensor, _ = transform(image, mask)
        heights.add(image_tensor.shape[1])
        widths.add(image_tensor.shape[2])
    assert min(heights) >= 128 - 16 and max(heights) <= 128 and min(widths) >= 113
    assert len(heights) > 8 and min(heights) < 118


def test_horizontal_flip_happens_about_half_the_time():
    transform = build_train_transform("official", size=64, seed=2, border_crop=0)
    image, mask = red_object_on_blue_clutter()
    flipped = 0
    for _ in range(100):
        _, mask_tensor = transform(image, mask)
        left, right = mask_tensor[0, :, :32].sum(), mask_tensor[0, :, 32:].sum()
        flipped += int(right > left)  # the L's long bar starts on the left
    assert 30 < flipped < 70


def test_normalisation_statistics():
    transform = build_train_transform(size=8, hflip=0, border_crop=0)
    image = np.broadcast_to(np.array(OFFICIAL_MEAN, np.float32).round().astype(np.uint8), (8, 8, 3)).copy()
    image_tensor, _ = transform(image, np.zeros((8, 8), np.uint8))
    assert image_tensor.abs().max() < 0.6 / min(OFFICIAL_STD)  # mean maps to ~0
    white = np.full((8, 8, 3), 255, np.uint8)
    official, _ = transform(white, np.zeros((8, 8), np.uint8))
    assert torch.allclose(official[:, 0, 0], torch.tensor([(255 - m) / s for m, s in zip(OFFICIAL_MEAN, OFFICIAL_STD)]))
    imagenet = build_train_transform(size=8, hflip=0, border_crop=0, normalization="imagenet")(white, white[..., 0])[0]
    expected = torch.tensor([(255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(imagenet[:, 0, 0], expected)
    custom = build_train_transform(size=8, hflip=0, border_crop=0, mean=(0, 0, 0), std=(255, 255, 255))(
        white, white[..., 0]
    )
    assert torch.allclose(custom[0], torch.ones(3, 8, 8))


def test_denormalize_inverts_the_normalisation():
    image, mask = red_object_on_blue_clutter(64, 64)
    image_tensor, _ = build_eval_transform(None)(image, mask)
    restored = denormalize(image_tensor)
    assert restored.dtype == torch.uint8 and restored.shape == (3, 64, 64)
    assert (restored.permute(1, 2, 0).numpy().astype(int) - image).__abs__().max() <= 1
    batch = denormalize(image_tensor[None].repeat(2, 1, 1, 1))
    assert batch.shape == (2, 3, 64, 64)


def test_mask_interpolation_modes():
    image, mask = red_object_on_blue_clutter()
    _, soft = build_train_transform(size=97, hflip=0, border_crop=0)(image, mask)
    _, hard = build_train_transform(size=97, hflip=0, border_crop=0, mask_interpolation="nearest")(image, mask)
    assert ((soft > 0) & (soft < 1)).any()  # official: bilinear, soft edges
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_eval_transform_keeps_the_original_mask():
    image, mask = red_object_on_blue_clutter(150, 210)
    image_tensor, mask_tensor = build_eval_transform(64)(image, mask)
    assert image_tensor.shape == (3, 64, 64)
    assert mask_tensor.shape == (1, 150, 210) and torch.equal(mask_tensor[0], torch.from_numpy(mask / 255).float())
    _, resized = build_eval_transform(64, resize_mask=True)(image, mask)
    assert resized.shape == (1, 64, 64)
    assert build_eval_transform(64, fast_decode=True).input_size == 64  # readers may decode reduced
    assert build_eval_transform(64).input_size is None and build_eval_transform(None).input_size is None


def test_training_and_evaluation_normalise_alike():
    """Training normalises with albumentations (``A.Normalize`` multiplies by 1/std), evaluation with
    ``pgnet.data.preprocessing.normalize`` (divides by std): equal up to the last float bit."""
    image, mask = red_object_on_blue_clutter(150, 210)
    for normalization in ("official", "imagenet"):
        train = build_train_transform(size=64, hflip=0, border_crop=0, normalization=normalization)
        evaluation = build_eval_transform(64, normalization=normalization, fast_decode=True, resize_mask=True)
        (train_image, train_mask), (eval_image, eval_mask) = train(image, mask), evaluation(image, mask)
        np.testing.assert_allclose(eval_image.numpy(), train_image.numpy(), rtol=0, atol=1e-5)
        assert torch.equal(eval_mask, train_mask)  # the same bilinear resize


def test_invalid_presets_and_options_are_rejected():
    assert {"official", "augmented"} <= set(PRESETS)
    with pytest.raises(ValueError, match="preset"):
        build_train_transform("nope")
    with pytest.raises(TypeError, match="rotation"):
        build_train_transform(rotation=5)
    with pytest.raises(ValueError, match="normalization"):
        build_train_transform(normalization="coco")
    with pytest.raises(ValueError, match="mask_interpolation"):
        build_train_transform(mask_interpolation="cubic")
