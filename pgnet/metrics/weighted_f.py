"""Weighted F-measure (Margolin et al., CVPR 2014), the definition of pysodmetrics / the MATLAB code.

With E = |p - gt|, background errors are first replaced by the error at their nearest foreground
pixel (Et), Et is blurred with MATLAB's ``fspecial('gaussian', 7, 5)`` (EA, zero padding),
foreground errors become min(E, EA), and background errors (E = p there) are weighted by
``2 - 0.5^(d/5)`` with d the distance to the foreground. Only what the result depends on is
computed:

- EA is read on foreground pixels only, so it is computed on the foreground's bounding box plus the
  kernel radius, and only background pixels within 3 pixels (Chebyshev) of the foreground need their
  nearest foreground pixel, found by a local search with scipy's tie-breaking.
- The background sum is ``2·Σp - Σ p·0.5^(d/5)``: ``Σp`` per class comes from the image's histogram.
  ``0.5^(d/5)`` is below 2^-53 beyond d ≈ 265 (pysodmetrics' ``2 - 0.5^(d/5)`` is exactly 2 there),
  and pixels with p = 0 add nothing, so the distance transform and the weighted sum run on the box
  holding the foreground and the pixels with p > 0, clipped to the foreground's box plus
  :data:`DISTANCE_CAP`. Distances are exact integers' square roots, as scipy's.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pgnet.metrics.distance import nearest_foreground_near_boundary, squared_distance_to_foreground
from pgnet.metrics.histogram import EPS, ImageHistograms
from pgnet.metrics.morphology import use_opencv

DISTANCE_CAP = 300
KERNEL_SIZE = 7
KERNEL_SIGMA = 5.0
_LOG_HALF_OVER_5 = math.log(0.5) / 5


def gaussian_taps(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """1-D float64 taps whose outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    half = (size - 1) / 2
    taps = np.exp(-(np.arange(-half, half + 1) ** 2) / (2 * sigma * sigma))
    return taps / taps.sum()


def gaussian_blur(errors: torch.Tensor, *, opencv: bool | None = None) -> torch.Tensor:
    """The 7×7 Gaussian filter of float64 H×W ``errors``, zero outside."""
    taps = gaussian_taps()
    if use_opencv(errors, opencv):
        blurred = cv2.sepFilter2D(errors.numpy(), cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(blurred)
    kernel = torch.from_numpy(taps).to(errors)
    pad = KERNEL_SIZE // 2
    blurred = F.conv2d(errors[None, None], kernel.view(1, 1, 1, -1), padding=(0, pad))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(pad, 0))[0, 0]


def foreground_bounds(foreground: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), bottom/right exclusive, of a bool H×W mask; None when it is empty."""
    as_bytes = foreground.view(torch.uint8)  # reductions over uint8 are much faster than over bool
    rows = as_bytes.amax(1).nonzero()
    if rows.numel() == 0:
        return None
    cols = as_bytes.amax(0).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _grow(bounds: tuple[int, int, int, int], margin: int, height: int, width: int) -> tuple[slice, slice]:
    top, bottom, left, right = bounds
    return (
        slice(max(top - margin, 0), min(bottom + margin, height)),
        slice(max(left - margin, 0), min(right + margin, width)),
    )


def _lookup(values: torch.Tensor, pred: torch.Tensor, opencv: bool | None) -> torch.Tensor:
    """``values[pred]`` for a uint8 h×w ``pred`` and 256 float64 ``values`` (OpenCV's LUT on the CPU;
    index_select elsewhere: both far faster than tensor indexing)."""
    if use_opencv(pred, opencv):
        return torch.from_numpy(cv2.LUT(pred.numpy(), values.numpy()))
    return values.index_select(0, pred.reshape(-1).int()).view(pred.shape)


@functools.lru_cache(maxsize=8)
def _decay_table(cap: int, device: torch.device) -> torch.Tensor:
    """``0.5^(sqrt(n)/5)`` for integer squared distances n = 0..cap², and 0 at cap² + 1 (beyond)."""
    distance = torch.arange(cap * cap + 2, dtype=torch.float64).sqrt_()
    table = distance.mul_(_LOG_HALF_OVER_5).exp_()
    table[-1] = 0
    return table.to(device)


def _foreground_error(gt: torch.Tensor, values: torch.Tensor, opencv: bool | None) -> torch.Tensor:
    """Σ over the foreground of min(E, EA), a float64 scalar; ``gt`` and ``values`` (the normalised
    prediction) cover the foreground's bounding box plus the kernel radius."""
    spread = torch.rsub(values, 1)
    torch.where(gt, spread, values, out=spread)  # (h, w) E = |p - gt|, then Et
    rows, cols, near_rows, near_cols = nearest_foreground_near_boundary(gt, KERNEL_SIZE // 2, opencv=opencv)
    spread[rows, cols] = spread[near_rows, near_cols]  # background near the foreground: E there
    blurred = gaussian_blur(spread, opencv=opencv)
    # On the foreground Et = E, so min(E, EA) = min(Et, EA).
    return torch.minimum(blurred, spread, out=blurred).masked_fill_(~gt, 0).sum()


def _decayed_sum(gt: torch.Tensor, values: torch.Tensor, opencv: bool | None) -> torch.Tensor:
    """Σ of p·0.5^(d/5) (d = 0 on the foreground), a float64 scalar, over a box holding the whole
    foreground (so that the distances are right) and every pixel with p > 0 that is within the cap."""
    squared = squared_distance_to_foreground(gt, DISTANCE_CAP, opencv=opencv).view(-1)  # cap² + 1 beyond
    table = _decay_table(DISTANCE_CAP, gt.device)  # 0.5^(d/5) by squared distance
    if use_opencv(gt, opencv):  # Σ over squared distances of (Σp there)·decay: no pixel-sized buffer
        return torch.dot(torch.bincount(squared, weights=values.reshape(-1), minlength=table.numel()), table)
    return torch.dot(values.reshape(-1), table.index_select(0, squared))


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _weighted_fmeasure_single(pred: torch.Tensor, gt: torch.Tensor, values: torch.Tensor, num_fg: float,
                              class_sums: torch.Tensor, beta: float, opencv: bool | None) -> torch.Tensor:
    height, width = gt.shape
    bounds = foreground_bounds(gt)
    inner = _grow(bounds, KERNEL_SIZE // 2, height, width)
    # The decayed sum needs the pixels with p > 0 (those from the first positive level on) within the
    # cap, and the whole foreground; the foreground part needs the inner box.
    box = (inner[0].start, inner[0].stop, inner[1].start, inner[1].stop)
    levels = (values > 0).nonzero()  # values grow with the level: p > 0 from the first of these on
    positive = foreground_bounds(pred >= int(levels[0])) if levels.numel() else None
    if positive is not None:
        box = _union(box, positive)
    outer = _grow(bounds, DISTANCE_CAP, height, width)
    box = (max(box[0], outer[0].start), min(box[1], outer[0].stop), max(box[2], outer[1].start),
           min(box[3], outer[1].stop))
    crop = (slice(box[0], box[1]), slice(box[2], box[3]))
    box_values = _lookup(values, pred[crop], opencv)  # (h, w) float64 normalised prediction
    local = tuple(slice(part.start - whole.start, part.stop - whole.start) for part, whole in zip(inner, crop))
    fg_error = _foreground_error(gt[inner], box_values[local], opencv)
    bg_sum, fg_sum = class_sums  # Σp over the background, the foreground
    decayed = _decayed_sum(gt[crop], box_values, opencv) if positive is not None else 0.0
    bg_error = 2 * bg_sum - (decayed - fg_sum)

    recall = 1 - fg_error / num_fg
    true_positive = num_fg - fg_error
    precision = true_positive / (true_positive + bg_error + EPS)
    return (1 + beta) * recall * precision / (recall + beta * precision + EPS)


def weighted_fmeasure(
    pred: torch.Tensor,
    gt: torch.Tensor,
    hist: ImageHistograms,
    beta: float = 1.0,
    *,
    opencv: bool | None = None,
) -> torch.Tensor:
    """(B,) float64 weighted F-measure of uint8 B×H×W predictions against bool B×H×W masks.

    ``hist`` is :func:`pgnet.metrics.histogram.joint_histogram` of the same batch (it supplies the
    normalised prediction values and their per-class sums). 0 for an empty mask, as pysodmetrics.
    """
    class_sums = (hist.class_counts * hist.values[:, None, :]).sum(2)  # (B, 2): Σp over bg, fg
    num_foreground = hist.num_foreground.tolist()
    scores = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    for index, num_fg in enumerate(num_foreground):
        if num_fg > 0:
            scores[index] = _weighted_fmeasure_single(pred[index], gt[index], hist.values[index], num_fg,
                                                      class_sums[index], beta, opencv)
    return scores
