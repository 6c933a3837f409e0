"""Boundary metrics of high-resolution segmentation: Boundary IoU and mean Boundary Accuracy.

pysodmetrics 1.6 has neither, so these follow the papers' reference code, on binarised maps (both
the prediction and the mask ``> 128`` on the 0..255 scale; the prediction is not min-max normalised):

- **BIoU**, Boundary IoU (Cheng et al., CVPR 2021; ``boundary_iou`` of the official API): the
  boundary of a mask is its pixels within ``d`` (Chebyshev) of the background, the image border
  counting as background (the official code erodes a zero-padded mask by a 3×3 square ``d`` times),
  ``d = max(1, round(0.02 · image diagonal))``. BIoU = |Gd ∩ Pd| / |Gd ∪ Pd|; 1 when both boundaries
  are empty (the official code divides 0 by 0).
- **mBA**, mean Boundary Accuracy (CascadePSP, Cheng et al., CVPR 2020, ``compute_boundary_acc``):
  for radii ``r_i = 1 + int((max_r - 1) / 5 · i)``, i = 0..4, ``max_r = (H + W) / 300``, the
  boundary region is where the mask's morphological gradient with OpenCV's elliptic kernel of size
  2r+1 is non-zero (outside pixels ignored); the accuracy is the fraction of region pixels where the
  binarised prediction equals the mask, 1 for an empty region (an empty or full mask, where the
  reference code divides 0 by 0); mBA is the mean of the five accuracies.
"""

from __future__ import annotations

import math

import torch

from pgnet.metrics.morphology import count_per_plane, elliptic_gradient, erode_square

BOUNDARY_THRESHOLD = 128  # the prediction is binarised at > 128 (0..255 scale)
BIOU_DILATION_RATIO = 0.02
MBA_STEPS = 5


def biou_dilation(height: int, width: int, ratio: float = BIOU_DILATION_RATIO) -> int:
    """Boundary width ``d`` of Boundary IoU: ``max(1, round(ratio · diagonal))`` (half to even)."""
    return max(1, round(ratio * math.sqrt(height * height + width * width)))


def inner_boundary(mask: torch.Tensor, width: int, *, opencv: bool | None = None) -> torch.Tensor:
    """Pixels of bool …×H×W ``mask`` within Chebyshev distance ``width`` of the background or the border."""
    return mask & ~erode_square(mask, width, opencv=opencv)


def boundary_iou(
    pred: torch.Tensor,
    gt: torch.Tensor,
    dilation_ratio: float = BIOU_DILATION_RATIO,
    *,
    opencv: bool | None = None,
) -> torch.Tensor:
    """(B,) float64 Boundary IoU of uint8 B×H×W predictions against bool B×H×W masks."""
    width = biou_dilation(gt.shape[-2], gt.shape[-1], dilation_ratio)
    gt_boundary = inner_boundary(gt, width, opencv=opencv)
    pred_boundary = inner_boundary(pred > BOUNDARY_THRESHOLD, width, opencv=opencv)
    intersection = count_per_plane(gt_boundary & pred_boundary, opencv=opencv)
    union = count_per_plane(gt_boundary, opencv=opencv) + count_per_plane(pred_boundary, opencv=opencv) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def mba_radii(height: int, width: int, steps: int = MBA_STEPS) -> list[int]:
    """CascadePSP's radii: ``1 + int((max_r - 1) / steps · i)`` with ``max_r = (H + W) / 300``."""
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / steps * i) for i in range(steps)]


def mean_boundary_accuracy(
    pred: torch.Tensor, gt: torch.Tensor, steps: int = MBA_STEPS, *, opencv: bool | None = None
) -> torch.Tensor:
    """(B,) float64 mBA of uint8 B×H×W predictions against bool B×H×W masks."""
    wrong = (pred > BOUNDARY_THRESHOLD) ^ gt
    accuracy_by_radius: dict[int, torch.Tensor] = {}
    radii = mba_radii(gt.shape[-2], gt.shape[-1], steps)
    for radius in set(radii):
        region = elliptic_gradient(gt, radius, opencv=opencv)
        size = count_per_plane(region, opencv=opencv)
        misses = count_per_plane(region & wrong, opencv=opencv)
        accuracy_by_radius[radius] = torch.where(size > 0, 1 - misses / size.clamp(min=1), 1.0)
    return torch.stack([accuracy_by_radius[radius] for radius in radii]).mean(0)
