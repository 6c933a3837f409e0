"""Weighted F-measure (Margolin et al., CVPR 2014), the definition of pysodmetrics / the MATLAB code.

With E = |p - gt|, background errors are first replaced by the error at their nearest foreground
pixel (Et), Et is blurred with MATLAB's ``fspecial('gaussian', 7, 5)`` (EA, zero padding), foreground
errors become min(E, EA), and background errors are weighted by ``2 - 0.5^(d/5)`` with d the
distance to the foreground. Only what the result depends on is computed:

- EA is read on foreground pixels only, so it is computed on the foreground's bounding box plus the
  kernel radius, and only background pixels within 3 pixels (Chebyshev) of the foreground need their
  nearest foreground pixel, found by a local search with scipy's tie-breaking.
- ``2 - 0.5^(d/5)`` rounds to exactly 2.0 in float64 beyond d ≈ 265, so distances are exact up to
  :data:`DISTANCE_CAP` and saturate beyond.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pgnet.metrics.distance import distance_to_foreground, nearest_foreground_near_boundary
from pgnet.metrics.histogram import EPS

DISTANCE_CAP = 300
KERNEL_SIZE = 7
KERNEL_SIGMA = 5.0
_LOG_HALF_OVER_5 = math.log(0.5) / 5


def matlab_gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)`` as a float64 size×size array."""
    half = (size - 1) / 2
    y, x = np.ogrid[-half:half + 1, -half:half + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def _gaussian_taps(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    half = (size - 1) / 2
    taps = np.exp(-(np.arange(-half, half + 1) ** 2) / (2 * sigma * sigma))
    return taps / taps.sum()


def _blur(errors: torch.Tensor) -> torch.Tensor:
    """The 7×7 Gaussian filter with zero padding, in float64."""
    if errors.device.type == "cpu":
        taps = _gaussian_taps()
        blurred = cv2.sepFilter2D(errors.numpy(), cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(blurred)
    kernel = torch.from_numpy(matlab_gaussian_kernel()).to(errors)
    blurred = F.conv2d(errors[None, None], kernel[None, None], padding=KERNEL_SIZE // 2)
    return blurred[0, 0]


def normalized_prediction(pred: torch.Tensor, lowest: int, highest: int) -> torch.Tensor:
    """uint8 -> float64 ``v/255``, min-max normalised by the image's ``lowest``/``highest`` values
    unless they are equal; the operations of pysodmetrics, so the values are bit-identical."""
    scaled = pred.double().div_(255)
    low, high = lowest / 255, highest / 255
    if high == low:
        return scaled
    return scaled.sub_(low).div_(high - low)


def _foreground_box(foreground: torch.Tensor, margin: int) -> tuple[slice, slice]:
    rows = foreground.any(1).nonzero()
    cols = foreground.any(0).nonzero()
    height, width = foreground.shape
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    return (slice(max(top - margin, 0), min(bottom + margin, height)),
            slice(max(left - margin, 0), min(right + margin, width)))


def weighted_fmeasure_single(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> float:
    """Weighted F-measure of one uint8 H×W prediction against a bool H×W mask (0 for an empty mask)."""
    num_fg = int(gt.count_nonzero())
    if num_fg == 0:
        return 0.0
    lowest, highest = int(pred.min()), int(pred.max())

    # Foreground: sum of min(E, EA) over the foreground, on the box where EA matters.
    margin = KERNEL_SIZE // 2
    box = _foreground_box(gt, margin)
    box_gt = gt[box]
    box_values = normalized_prediction(pred[box], lowest, highest)
    errors = torch.where(box_gt, 1 - box_values, box_values)
    rows, cols, near_rows, near_cols = nearest_foreground_near_boundary(box_gt, margin)
    spread = errors.clone()
    spread[rows, cols] = errors[near_rows, near_cols]
    blurred = _blur(spread)
    fg_error_sum = float(torch.minimum(blurred, errors).masked_fill_(~box_gt, 0).sum())

    # Background: errors (= p) weighted by 2 - 0.5^(d/5) = 2 - exp(log(0.5)/5 · d). The weight is
    # exactly 2.0 beyond DISTANCE_CAP, so only the box within that distance of the foreground needs d.
    box = _foreground_box(gt, DISTANCE_CAP)
    decay = distance_to_foreground(gt[box], DISTANCE_CAP).mul_(_LOG_HALF_OVER_5).exp_()
    decay.masked_fill_(gt[box], 0)
    bg_values = normalized_prediction(pred, lowest, highest).masked_fill_(gt, 0)
    bg_error_sum = float(2 * bg_values.sum() - (bg_values[box] * decay).sum())

    recall = 1 - fg_error_sum / num_fg
    true_positive = num_fg - fg_error_sum
    precision = true_positive / (true_positive + bg_error_sum + EPS)
    return (1 + beta) * recall * precision / (recall + beta * precision + EPS)


def weighted_fmeasure(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """(B,) float64 weighted F-measure of uint8 B×H×W predictions against bool B×H×W masks."""
    scores = [weighted_fmeasure_single(p, g, beta) for p, g in zip(pred, gt)]
    return torch.tensor(scores, dtype=torch.float64, device=pred.device)
