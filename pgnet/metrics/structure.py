"""S-measure (Fan et al., ICCV 2017) from the per-image joint histograms.

Object part: mean and sample standard deviation of the prediction over the foreground (and of
``1 - p`` over the background) come from the value histograms of each class. Region part: an SSIM
per quadrant around the foreground centroid, whose means, variances and covariance are two-pass sums
over each quadrant's histogram, so they are as accurate as pysodmetrics' pixel sums.

Two edge cases follow pysodmetrics' arithmetic rather than the formula:

- A quadrant where both the prediction and the mask are constant scores 1 if the quadrant's variance
  is exactly zero and 0 otherwise, and pysodmetrics' variance is zero only when numpy's float sum of
  the constant reproduces it exactly. That depends on numpy's summation order, so it is decided by
  the same numpy reduction over an array of the quadrant's shape and memory layout.
- A quadrant with no pixels (the centroid on the last row or column) makes pysodmetrics return NaN
  (a mean of nothing times a zero weight); here it contributes 0, its weight.
"""

from __future__ import annotations

import numpy as np
import torch

from pgnet.metrics.histogram import EPS, ImageHistograms


def _object_score(counts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """2·mean / (mean² + 1 + std + eps) of values weighted by counts; (B, 256) -> (B,)."""
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total.clamp(min=1)
    squares = (counts * (values - mean[:, None]) ** 2).sum(1)
    std = torch.where(total > 1, torch.sqrt(squares / (total - 1).clamp(min=1)), 0.0)
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _numpy_mean_reproduces(value: float, row_start: int, row_stop: int, col_start: int, col_stop: int,
                           width: int) -> bool:
    """Whether numpy's mean over ``a[row_start:row_stop, col_start:col_stop]`` of a C-contiguous
    float64 array of width ``width`` filled with ``value`` equals ``value`` exactly."""
    block = np.full((row_stop, width), value, dtype=np.float64)
    return bool(block[row_start:row_stop, col_start:col_stop].mean() == value)


def _quadrant_bounds(split: torch.Tensor, height: int, width: int) -> list[list[tuple[int, int, int, int]]]:
    bounds = []
    for cy, cx in split.tolist():
        bounds.append([(0, cy, 0, cx), (0, cy, cx, width), (cy, height, 0, cx), (cy, height, cx, width)])
    return bounds


def _region_score(hist: ImageHistograms) -> torch.Tensor:
    counts = hist.counts  # (B, 4, 2, 256)
    values = hist.values[:, None, :]  # (B, 1, 256)
    per_value = counts.sum(2)  # (B, 4, 256)
    size = per_value.sum(2)  # (B, 4)
    fg = counts[:, :, 1].sum(2)
    bg = size - fg
    safe_size = size.clamp(min=1)
    x = (per_value * values).sum(2) / safe_size
    y = fg / safe_size
    deviation = values - x[..., None]  # (B, 4, 256)
    denominator = size - 1 + EPS
    var_x = (per_value * deviation**2).sum(2) / denominator
    gt_bg, gt_fg = 0 - y, 1 - y
    var_y = (bg * gt_bg**2 + fg * gt_fg**2) / denominator
    covariance = ((counts[:, :, 0] * deviation).sum(2) * gt_bg + (counts[:, :, 1] * deviation).sum(2) * gt_fg)
    covariance = covariance / denominator
    alpha = 4 * x * y * covariance
    beta = (x**2 + y**2) * (var_x + var_y)
    score = torch.where(alpha != 0, alpha / (beta + EPS), (beta == 0).double())

    # Quadrants with a constant prediction and a constant mask: decided by numpy's summation.
    distinct_values = (per_value > 0).sum(2)
    mixed_mask = ((fg.sum(1) > 0) & (bg.sum(1) > 0))[:, None]  # other masks do not use the region part
    degenerate = mixed_mask & (size > 0) & (distinct_values == 1) & ((fg == 0) | (bg == 0))
    if bool(degenerate.any()):
        bounds = _quadrant_bounds(hist.split, hist.height, hist.width)
        constant = (per_value > 0).double().argmax(2)  # (B, 4) the one value present
        for b, q in degenerate.nonzero().tolist():
            value = float(hist.values[b, constant[b, q]])
            reproduces = _numpy_mean_reproduces(value, *bounds[b][q], hist.width)
            score[b, q] = 1.0 if reproduces else 0.0
    score = torch.where(size > 0, score, 0.0)

    area = hist.num_pixels
    cy, cx = hist.split[:, 0].double(), hist.split[:, 1].double()
    w_lt = cx * cy / area
    w_rt = cy * (hist.width - cx) / area
    w_lb = (hist.height - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    return score[:, 0] * w_lt + score[:, 1] * w_rt + score[:, 2] * w_lb + score[:, 3] * w_rb


def smeasure(hist: ImageHistograms, alpha: float = 0.5) -> torch.Tensor:
    """(B,) S-measure: ``max(0, alpha·object + (1 - alpha)·region)``; 1 - mean(p) for an empty mask and
    mean(p) for a full one."""
    per_class = hist.class_counts  # (B, 2, 256)
    values = hist.values
    num_fg = per_class[:, 1].sum(1)
    gt_mean = num_fg / hist.num_pixels
    pred_mean = (per_class.sum(1) * values).sum(1) / hist.num_pixels

    fg_score = _object_score(per_class[:, 1], values) * gt_mean
    bg_score = _object_score(per_class[:, 0], 1 - values) * (1 - gt_mean)
    object_score = (fg_score + bg_score) * alpha
    region_score = _region_score(hist) * (1 - alpha)
    combined = torch.clamp(object_score + region_score, min=0)
    return torch.where(gt_mean == 0, 1 - pred_mean, torch.where(gt_mean == 1, pred_mean, combined))
