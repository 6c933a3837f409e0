"""How a network's input is prepared: the one evaluation preprocessing, and its statistics and test size.

A model trained with other statistics than the official ones must be fed with those statistics:
``Preprocessing`` travels in every project checkpoint (``model_checkpoint``) and prediction,
evaluation and export read it back. Checkpoints without it (official ones, older project ones)
get the official statistics and test size.

The evaluation preprocessing (``prepare_image`` for one picture, ``prepare_batch`` for several) is
the one that the ``Predictor`` and the evaluator's and the validation's datasets
(``pgnet.data.transforms.build_eval_transform``) run: by default the official order (normalised as
float at full size, then resized); with ``fast_decode`` resized as uint8 first, then normalised.
The ONNX graph (``pgnet.predict.export``) runs its ``normalize`` step on pictures resized by the
caller. It lives in ``data`` rather than in ``predict`` because dataset workers run it, below
everything that predicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from pgnet.data.io import split_alpha
from pgnet.errors import UnknownNameError, UserError

# Normalisation statistics on the 0-255 scale, RGB order.
OFFICIAL_MEAN: tuple[float, float, float] = (124.55, 118.90, 102.94)
OFFICIAL_STD: tuple[float, float, float] = (56.77, 55.97, 57.50)
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "official": (OFFICIAL_MEAN, OFFICIAL_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
OFFICIAL_EVAL_SIZE = 1024


def normalization_stats(
    normalization: str = "official", mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-255 scale: the named statistics, each replaced by ``mean``/``std`` when given."""
    if normalization not in NORMALIZATIONS:
        raise UnknownNameError(f"unknown normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
    default_mean, default_std = NORMALIZATIONS[normalization]
    mean = tuple(float(v) for v in (default_mean if mean is None else mean))
    std = tuple(float(v) for v in (default_std if std is None else std))
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"mean and std need 3 values (RGB), got mean {list(mean)} and std {list(std)}")
    if min(std) <= 0:
        raise UserError(f"std values must be positive, got {list(std)}")
    return mean, std


@dataclass(frozen=True)
class Preprocessing:
    """What a network expects: RGB normalised as (x − mean)/std (0-255 scale) at ``eval_size``² for tests."""

    mean: tuple[float, ...] = OFFICIAL_MEAN
    std: tuple[float, ...] = OFFICIAL_STD
    eval_size: int = OFFICIAL_EVAL_SIZE

    @classmethod
    def from_data_config(cls, data: Any) -> Preprocessing:
        """The preprocessing a ``DataConfig`` trains and validates with."""
        mean, std = normalization_stats(data.normalization, data.mean, data.std)
        return cls(mean, std, int(data.eval_size))

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any], source: str = "checkpoint") -> Preprocessing:
        """The checkpoint's preprocessing; the official one when it records none (official, older files)."""
        values = state.get("preprocessing")
        if values is None:
            return cls()
        try:
            mean, std = normalization_stats("official", values["mean"], values["std"])
            eval_size = int(values["eval_size"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{source}: invalid 'preprocessing' entry {values!r}: {error}") from None
        return cls(mean, std, eval_size)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "eval_size": self.eval_size}


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = OFFICIAL_MEAN,
    std: Sequence[float] = OFFICIAL_STD,
    channel_dim: int = 1,
) -> torch.Tensor:
    """RGB on the 0-255 scale (any dtype) → float32 (x − mean) / std, per channel along ``channel_dim``.

    The network's input normalisation, the one formula every path runs: ``channel_dim`` -1 for H×W×3
    pictures (``prepare_image``), 1 for B×3×H×W batches (the ONNX graph of ``pgnet.predict.export``).
    """
    shape = [1] * images.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return (images.float() - mean) / std


def resize_for_network(image: np.ndarray, size: int | None) -> np.ndarray:
    """H×W(×C) → size×size(×C) in the same dtype, bilinear (``cv2.INTER_LINEAR``); None: as it is."""
    if size is None or image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def normalize_then_resize(
    image: np.ndarray, size: int | None, mean: Sequence[float] = OFFICIAL_MEAN, std: Sequence[float] = OFFICIAL_STD
) -> np.ndarray:
    """The official test preprocessing: H×W×3 uint8 RGB at full size → size×size×3 float32, normalised
    as float first, then resized (bilinear)."""
    return resize_for_network(normalize(_as_tensor(image), mean, std, channel_dim=-1).numpy(), size)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on ``array``'s memory, or on a copy when that is read-only or not contiguous."""
    return torch.from_numpy(np.require(array, requirements=("C", "W")))


def as_rgb_array(image: np.ndarray | Any) -> np.ndarray:
    """An H×W×3 uint8 RGB array from a numpy array or a PIL image.

    Arrays must be uint8, H×W×3 (RGB); H×W (gray) and H×W×4 (alpha dropped) are accepted too. A PIL
    image is converted to RGB as it is, without applying its EXIF orientation.
    """
    return split_alpha(image)[0]


def prepare_image(
    image: np.ndarray | Any,
    size: int | None,
    preprocessing: Preprocessing,
    fast_decode: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A picture (H×W×3 uint8 RGB array or PIL image) → the 3×S×S float32 network input on ``device``.

    Default: the official order, normalised as float at full size, then resized; ``fast_decode``:
    resized as uint8 (a no-op for a picture already size×size), then normalised on ``device``.
    ``size`` None keeps the picture's size.
    """
    image = as_rgb_array(image)
    if fast_decode:
        resized = _as_tensor(resize_for_network(image, size)).to(device)
        prepared = normalize(resized, preprocessing.mean, preprocessing.std, channel_dim=-1)
    else:
        prepared = torch.from_numpy(normalize_then_resize(image, size, preprocessing.mean, preprocessing.std))
        prepared = prepared.to(device)
    return prepared.permute(2, 0, 1).contiguous()


def prepare_batch(
    images: Sequence[np.ndarray | Any], size: int, preprocessing: Preprocessing, fast_decode: bool,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pictures (H×W×3 uint8 RGB arrays or PIL images) → the B×3×S×S float32 network input on
    ``device``, each prepared by ``prepare_image``."""
    return torch.stack([prepare_image(image, size, preprocessing, fast_decode, device) for image in images])
