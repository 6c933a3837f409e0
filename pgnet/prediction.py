"""The prediction step shared by the ``Predictor`` and the evaluator: pictures in, probabilities out.

1. Preprocess (``prepare_batch``): each H×W×3 uint8 RGB picture becomes a size×size normalised input,
   by default as the official test code does (normalised as float at full size, then resized); with
   ``fast_decode`` resized as uint8 first and normalised on the device. The evaluator's datasets do
   the same through ``pgnet.data.transforms.build_eval_transform``.
2. Predict (``predict_probabilities``): the network runs (channels_last input for an optimised
   network, under the caller's autocast, with the mirrored picture when ``flip``); its logits leave
   the head at stride 4 and are resized once, straight to each picture's own size, before the
   sigmoid (as the official test code does).

``pgnet.runtime.InferenceRuntime`` holds the network, device and precision this step runs with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgnet.compose import split_alpha
from pgnet.data.preprocessing import OFFICIAL_MEAN, OFFICIAL_STD, Preprocessing, normalize_then_resize


def normalize(
    images: torch.Tensor, mean: Sequence[float] = OFFICIAL_MEAN, std: Sequence[float] = OFFICIAL_STD
) -> torch.Tensor:
    """B×3×H×W RGB on the 0-255 scale (any dtype) → float32 normalised with ``mean``/``std`` (0-255 scale).

    The network's input normalisation on tensors: the predictor's fast path and the ONNX export use
    it; it equals the ``A.Normalize`` step of ``build_eval_transform``.
    """
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def resize_for_network(image: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 → size×size×3 uint8, bilinear: the ``A.Resize`` step of ``build_eval_transform``."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def as_rgb_array(image: np.ndarray | Any) -> np.ndarray:
    """An H×W×3 uint8 RGB array from a numpy array or a PIL image.

    Arrays must be uint8, H×W×3 (RGB); H×W (gray) and H×W×4 (alpha dropped) are accepted too. A PIL
    image is converted to RGB as it is, without applying its EXIF orientation.
    """
    return split_alpha(image)[0]


def prepare_batch(
    images: Sequence[np.ndarray], size: int, preprocessing: Preprocessing, fast_decode: bool, device: torch.device
) -> torch.Tensor:
    """Pictures (H×W×3 uint8 RGB arrays or PIL images) → the B×3×S×S float32 network input on ``device``.

    Default: the official order, each picture normalised as float at full size, then resized;
    ``fast_decode``: resized as uint8 (a no-op for a picture already size×size), then normalised on
    the device.
    """
    mean, std = preprocessing.mean, preprocessing.std
    if fast_decode:
        batch = np.stack([resize_for_network(as_rgb_array(image), size) for image in images])  # B×S×S×3
        return normalize(torch.from_numpy(batch).to(device).permute(0, 3, 1, 2), mean, std)
    batch = np.stack([normalize_then_resize(as_rgb_array(image), size, mean, std) for image in images])
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    flip: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """Saliency probabilities of normalised ``images`` (B×3×S×S on the model's device), one H×W
    float32 tensor per image at its ``sizes`` entry.

    The head runs at stride 4 (the ResNet's r2 grid): asking for that size keeps the network from
    resizing, so each map is resized once, straight to its target size, before the sigmoid (as the
    official test code does). ``flip`` averages with the mirrored image's probabilities; ``autocast``
    wraps the forward pass; ``channels_last`` feeds the network channels_last images (what a network
    prepared by ``pgnet.acceleration`` runs fastest on). Used by the predictor and the evaluator alike.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch_size = images.shape[0]
    if flip:
        images = torch.cat((images, images.flip(-1)))  # 2B×3×S×S
    head_size = (-(-images.shape[-2] // 4), -(-images.shape[-1] // 4))
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits = model(images, output_size=head_size, need_attention=False).pred  # (2)B×1×h×w
    logits = logits.float()
    probabilities = []
    for index, size in enumerate(sizes):
        views = logits[index : index + 1]
        if flip:
            views = torch.cat((views, logits[batch_size + index : batch_size + index + 1].flip(-1)))
        resized = F.interpolate(views, size=tuple(size), mode="bilinear", align_corners=False)
        probabilities.append(torch.sigmoid(resized).mean(0)[0])  # H×W
    return probabilities
