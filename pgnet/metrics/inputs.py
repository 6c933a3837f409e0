"""Bringing predictions and masks into the one form every metric reads.

Predictions become uint8 0..255 exactly as an 8-bit PNG would store them, so scoring a model's output
directly gives the same numbers as saving it and scoring the files. Masks become bool: > 128 on the
0..255 scale, the rule of pysodmetrics and the MATLAB toolboxes before it.
"""

from __future__ import annotations

import numpy as np
import torch

MASK_THRESHOLD = 128  # ground truth above this (0..255 scale) is foreground

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(array: ArrayLike) -> torch.Tensor:
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    if isinstance(array, torch.Tensor):
        return array.detach()
    raise TypeError(f"expected a torch.Tensor or numpy array, got {type(array).__name__}")


def quantize_prediction(pred: ArrayLike) -> torch.Tensor:
    """A prediction as uint8 0..255, the way an 8-bit PNG stores it.

    uint8 passes through; bool becomes 0/255; floats in [0, 1] become ``round(clip(p, 0, 1) * 255)``
    (half to even, computed in the input's precision, as ``np.round`` before ``cv2.imwrite``).
    """
    tensor = _as_tensor(pred)
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8) * 255
    if not tensor.is_floating_point():
        raise TypeError(f"predictions must be float in [0, 1], uint8 or bool, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("prediction contains NaN or infinite values")
    return (tensor.clamp(0, 1) * 255).round().to(torch.uint8)


def binarize_ground_truth(gt: ArrayLike) -> torch.Tensor:
    """A mask as bool foreground: uint8 > 128; float (0..1 scale) ``round(gt·255) > 128``, so a float
    copy ``mask / 255`` of a uint8 mask binarises as the mask does; bool as it is."""
    tensor = _as_tensor(gt)
    if tensor.dtype == torch.bool:
        return tensor
    if tensor.dtype == torch.uint8:
        return tensor > MASK_THRESHOLD
    if tensor.is_floating_point():
        return (tensor * 255).round() > MASK_THRESHOLD
    raise TypeError(f"masks must be uint8 0..255, float in [0, 1] or bool, got {tensor.dtype}")


def _as_batch(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.dim() == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"{what} must be H×W, B×H×W or B×1×H×W, got shape {tuple(tensor.shape)}")
    return tensor


def prepare_batch(
    pred: ArrayLike, gt: ArrayLike, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred uint8 B×H×W, gt bool B×H×W) on ``device`` (None: the prediction's device).

    Raises ValueError when the shapes differ: resize the prediction to the mask first.
    """
    pred_tensor, gt_tensor = _as_tensor(pred), _as_tensor(gt)
    if device is None:
        device = pred_tensor.device
    pred_batch = _as_batch(quantize_prediction(pred_tensor.to(device)), "prediction")
    gt_batch = _as_batch(binarize_ground_truth(gt_tensor.to(device)), "ground truth")
    if pred_batch.shape != gt_batch.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_batch.shape)} does not match ground truth shape "
            f"{tuple(gt_batch.shape)}; resize the prediction to the mask first"
        )
    if pred_batch.shape[1] == 0 or pred_batch.shape[2] == 0:
        raise ValueError(f"empty image of shape {tuple(pred_batch.shape[1:])}")
    return pred_batch.contiguous(), gt_batch.contiguous()
