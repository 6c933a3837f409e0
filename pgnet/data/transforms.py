"""Training and evaluation transforms (albumentations), from uint8 arrays to normalised tensors.

The default ``official`` training preset follows the PGNet recipe: resize to size×size, a random
crop removing up to 1/8 of the height and of the width, horizontal flip (p=0.5), normalisation with
the official statistics. The batch-level multi-scale resize lives in the collate function
(:class:`pgnet.data.loader.MultiScaleCollate`). Masks enter as uint8 0/255 and leave as float in
[0, 1]; they are resized bilinearly by default, as the official code does, so edges may be soft.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

# albumentations looks for a newer release online when imported, unless this is set (also a slow
# start and a warning offline): set here, the one module that imports it, for every entry point.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop

from pgnet.data.preprocessing import (  # noqa: F401  (the statistics' names, re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    Preprocessing,
    normalization_stats,
    prepare_image,
    resize_for_network,
)
from pgnet.errors import UnknownNameError, UserError

# Training options by preset. color_jitter: strength (0 = off); rotate: max degrees (0 = off);
# scale_crop: smallest area fraction of a random resized crop (0 = off); border_crop: largest
# fraction of each dimension the official crop removes; hflip: flip probability.
PRESETS: dict[str, dict[str, float]] = {
    "official": {"hflip": 0.5, "border_crop": 1 / 8, "color_jitter": 0.0, "rotate": 0.0, "scale_crop": 0.0},
    "augmented": {"hflip": 0.5, "border_crop": 1 / 8, "color_jitter": 0.2, "rotate": 10.0, "scale_crop": 0.6},
}
_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class BorderCrop(BaseCrop):
    """Random crop removing up to ``max_fraction`` of the height and of the width.

    As in the official recipe, the removed rows (and columns) are split at random between the two
    opposite sides: a 1024-px side becomes 897 to 1024 px.
    """

    def __init__(self, max_fraction: float = 1 / 8, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.max_fraction = max_fraction

    def _cut(self, length: int) -> tuple[int, int]:
        """(offset, kept length) along one dimension."""
        limit = int(length * self.max_fraction)
        removed = self.py_random.randrange(limit) if limit > 0 else 0
        offset = self.py_random.randrange(removed) if removed > 0 else 0
        return offset, length - removed

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        top, kept_height = self._cut(height)
        left, kept_width = self._cut(width)
        return {"crop_coords": (left, top, left + kept_width, top + kept_height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_fraction",)


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """H×W uint8 0/255 → 1×H×W float32 in [0, 1]."""
    return torch.from_numpy(mask.astype(np.float32) / np.float32(255.0)).unsqueeze(0)


class SampleTransform(Protocol):
    """What a dataset needs of a transform: called with ``image`` (H×W×3 uint8 RGB) and ``mask``
    (H×W uint8 0/255), it returns (image float32 3×h×w normalised, mask float32 1×h'×w' in [0, 1]).
    ``input_size``: a side readers may decode images down to (None: decode them whole);
    ``resizes_mask``: whether the mask follows the image's size (else it keeps its own, to score
    predictions resized back to it)."""

    input_size: int | None
    resizes_mask: bool

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...

    def set_random_seed(self, seed: int) -> None: ...


class PairTransform:
    """An albumentations pipeline (training) for an image/mask pair that returns tensors.

    The mask goes through the pipeline with the image. ``input_size`` is the side the pipeline first
    resizes to: readers may decode images down to it.
    """

    resizes_mask = True

    def __init__(self, pipeline: A.Compose, input_size: int | None) -> None:
        self.pipeline = pipeline
        self.input_size = input_size

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.pipeline(image=image, mask=mask)
        image_tensor = torch.from_numpy(np.ascontiguousarray(result["image"].transpose(2, 0, 1), dtype=np.float32))
        return image_tensor, _mask_tensor(result["mask"])

    def set_random_seed(self, seed: int) -> None:
        """Reseed the pipeline's random generators (per worker, for reproducible runs)."""
        self.pipeline.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"PairTransform(input_size={self.input_size}, {self.pipeline!r})"


class EvalTransform:
    """The evaluation preprocessing (``pgnet.data.preprocessing.prepare_image``) of an image/mask pair.

    The image becomes the 3×size×size float32 network input (size None: its own size); the mask,
    float32 1×h×w in [0, 1], keeps its resolution unless ``resizes_mask`` (then bilinear to
    size×size). ``input_size`` is ``size`` with ``fast_decode`` (readers may decode large JPEGs
    reduced, no smaller than it), None for the official protocol (decoded at full size).
    """

    def __init__(self, size: int | None, preprocessing: Preprocessing, fast_decode: bool = False,
                 resizes_mask: bool = False) -> None:
        self.size = size
        self.preprocessing = preprocessing
        self.fast_decode = fast_decode
        self.input_size = size if fast_decode else None
        self.resizes_mask = resizes_mask

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resizes_mask:
            mask = resize_for_network(mask, self.size)
        return prepare_image(image, self.size, self.preprocessing, self.fast_decode), _mask_tensor(mask)

    def set_random_seed(self, seed: int) -> None:
        """Nothing to reseed: the evaluation preprocessing is deterministic."""

    def __repr__(self) -> str:
        return (f"EvalTransform(size={self.size}, fast_decode={self.fast_decode}, "
                f"resizes_mask={self.resizes_mask}, {self.preprocessing})")


def to_sample(
    transform: SampleTransform, image: np.ndarray, mask: np.ndarray, name: str, size: tuple[int, int]
) -> dict[str, Any]:
    """Apply ``transform`` and pack one dataset item: image, mask, name, size (original (H, W))."""
    image_tensor, mask_tensor = transform(image, mask)
    return {"image": image_tensor, "mask": mask_tensor, "name": name, "size": (int(size[0]), int(size[1]))}


def _normalize(mean: Sequence[float] | None, std: Sequence[float] | None, normalization: str) -> A.Normalize:
    mean, std = normalization_stats(normalization, mean, std)
    return A.Normalize(mean=mean, std=std, max_pixel_value=1.0)  # statistics are on the 0-255 scale


def build_train_transform(
    preset: str = "official",
    size: int = 1024,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    normalization: str = "official",
    mask_interpolation: str = "bilinear",
    seed: int | None = None,
    **options: float,
) -> PairTransform:
    """The training transform of ``preset`` (see :data:`PRESETS`) at ``size``.

    ``options`` override the preset's entries (hflip, border_crop, color_jitter, rotate,
    scale_crop). ``normalization`` picks the statistics ('official' or 'imagenet'); explicit
    ``mean``/``std`` (0-255 scale) override it. ``mask_interpolation``: 'bilinear' (official, soft
    edges) or 'nearest'.
    """
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown transform preset {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = set(options) - set(PRESETS[preset])
    if unknown:
        raise TypeError(f"unknown transform options {sorted(unknown)}; valid: {sorted(PRESETS[preset])}")
    if mask_interpolation not in _INTERPOLATIONS:
        raise UserError(f"mask_interpolation must be one of {list(_INTERPOLATIONS)}, got {mask_interpolation!r}")
    settings = {**PRESETS[preset], **{key: float(value) for key, value in options.items()}}
    mask_mode = _INTERPOLATIONS[mask_interpolation]

    steps: list[A.BasicTransform] = [A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=mask_mode)]
    if settings["scale_crop"] > 0:
        steps.append(
            A.RandomResizedCrop(
                size=(size, size),
                scale=(settings["scale_crop"], 1.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=mask_mode,
                p=0.5,
            )
        )
    if settings["rotate"] > 0:
        steps.append(
            A.Rotate(
                limit=settings["rotate"],
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=mask_mode,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            )
        )
    if settings["border_crop"] > 0:
        steps.append(BorderCrop(max_fraction=settings["border_crop"]))
    if settings["hflip"] > 0:
        steps.append(A.HorizontalFlip(p=settings["hflip"]))
    if settings["color_jitter"] > 0:
        strength = settings["color_jitter"]
        steps.append(
            A.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength / 10, p=0.8)
        )
    steps.append(_normalize(mean, std, normalization))
    return PairTransform(A.Compose(steps, seed=seed), input_size=size)


def build_eval_transform(
    size: int | None = 1024,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    normalization: str = "official",
    resize_mask: bool = False,
    fast_decode: bool = False,
) -> EvalTransform:
    """Normalise the image and resize it to size×size (None: keep its size), as the ``Predictor`` does.

    By default this is the official test protocol: the picture is decoded at full size, normalised
    as float, then resized (bilinear). ``fast_decode`` trades exactness for speed: large JPEGs are
    decoded at 1/2, 1/4 or 1/8 scale (no smaller than ``size``) and the uint8 picture is resized
    before it is normalised. ``normalization`` picks the statistics, which explicit ``mean``/``std``
    (0-255 scale) override. The mask keeps its original resolution (to score predictions resized
    back to it) unless ``resize_mask`` is True, e.g. for a validation loss at the test size.
    """
    mean, std = normalization_stats(normalization, mean, std)
    preprocessing = Preprocessing(mean, std) if size is None else Preprocessing(mean, std, int(size))
    return EvalTransform(size, preprocessing, fast_decode=fast_decode, resizes_mask=resize_mask)


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = OFFICIAL_MEAN, std: Sequence[float] = OFFICIAL_STD
) -> torch.Tensor:
    """Undo the normalisation for display: (…×3×H×W float) -> (…×3×H×W uint8, 0..255)."""
    mean_tensor = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_tensor = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std_tensor + mean_tensor).round().clamp(0, 255).to(torch.uint8)
