"""Per-image histograms of prediction values, and the metrics that need nothing more.

A uint8 prediction takes at most 256 values, so every metric that does not look at where pixels lie
(MAE, F-measure, E-measure) and the S-measure, which only needs sums over four quadrants, can be
computed from one joint histogram per image: pixel counts by (quadrant, gt class, prediction value).
One ``bincount`` over the batch replaces a dozen passes over the pixels, and the metric arithmetic
then runs in float64 on 256-entry vectors, in the same operation order as pysodmetrics.

Conventions (those of pysodmetrics 1.6): the prediction is scaled to [0, 1] (``v / 255``) and
min-max normalised per image unless constant; curves are over 256 thresholds in descending order,
entry ``i`` counting pixels whose value ``trunc(p * 255)`` is at least ``255 - i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pgnet.metrics.morphology import use_opencv

EPS = float(np.spacing(1))  # MATLAB's eps, as pysodmetrics uses it
NUM_LEVELS = 256


@dataclass
class ImageHistograms:
    """Pixel counts of a batch of same-sized images and the numbers derived from them.

    ``counts[b, q, c, v]``: pixels of image ``b`` in quadrant ``q`` (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right around the S-measure's foreground centroid) with gt class ``c``
    (0 background, 1 foreground) and prediction value ``v``. ``split`` holds the 1-based centroid
    (row, column) that separates the quadrants, as pysodmetrics computes it. ``values[b, v]`` is the
    normalised prediction value of uint8 ``v`` in image ``b`` (float64, bit-identical to
    pysodmetrics' ``(v/255 - min) / (max - min)``).
    """

    counts: torch.Tensor  # (B, 4, 2, 256) float64
    split: torch.Tensor  # (B, 2) int64
    values: torch.Tensor  # (B, 256) float64
    height: int
    width: int

    @property
    def num_pixels(self) -> int:
        return self.height * self.width

    @property
    def class_counts(self) -> torch.Tensor:
        """(B, 2, 256): pixels by gt class and prediction value."""
        return self.counts.sum(1)

    @property
    def num_foreground(self) -> torch.Tensor:
        """(B,) float64: foreground pixels of each mask."""
        return self.counts[:, :, 1].sum((1, 2))


def foreground_split(gt: torch.Tensor) -> torch.Tensor:
    """(B, 2) int64: the S-measure's quadrant split, ``round(centroid) + 1`` as (row, column).

    The centroid is the mean foreground pixel coordinate, rounded half to even; integer sums make it
    exact. An empty mask gets ``round(size / 2) + 1`` (pysodmetrics' value; the S-measure of an empty
    mask does not use it).
    """
    _, height, width = gt.shape
    as_bytes = gt.view(torch.uint8)  # sums over uint8 are much faster than over bool
    row_counts = as_bytes.sum(2, dtype=torch.int32).long()  # (B, H)
    col_counts = as_bytes.sum(1, dtype=torch.int32).long()  # (B, W)
    total = row_counts.sum(1)
    rows = torch.arange(height, device=gt.device)
    cols = torch.arange(width, device=gt.device)
    row_sum = (row_counts * rows).sum(1)
    col_sum = (col_counts * cols).sum(1)
    safe_total = total.clamp(min=1).double()
    cy = torch.where(total > 0, torch.round(row_sum.double() / safe_total), float(round(height / 2)))
    cx = torch.where(total > 0, torch.round(col_sum.double() / safe_total), float(round(width / 2)))
    return torch.stack([cy, cx], 1).long() + 1


def normalized_values(class_counts: torch.Tensor) -> torch.Tensor:
    """(B, 256) float64: each uint8 value's prediction after scaling and per-image min-max normalisation.

    Computed on the CPU (256 entries per image): CUDA divides by a scalar as a multiplication by its
    reciprocal, which moves values that sit on a bin edge and changes the curves.
    """
    present = class_counts.sum(1).cpu() > 0  # (B, 256)
    levels = torch.arange(NUM_LEVELS, dtype=torch.float64)
    scaled = (levels / 255).expand(present.shape[0], NUM_LEVELS)
    lowest = torch.where(present, levels, float(NUM_LEVELS)).amin(1, keepdim=True)
    highest = torch.where(present, levels, -1.0).amax(1, keepdim=True)
    low, high = lowest / 255, highest / 255
    normalised = (scaled - low) / torch.where(high != low, high - low, 1.0)
    return torch.where(high != low, normalised, scaled).to(class_counts.device)


def _quadrant_counts_opencv(pred: torch.Tensor, gt: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """(B, 4, 2, 256) float64 counts with OpenCV's histogram (exact below 2^24 pixels: float32 counts)."""
    counts = torch.zeros(pred.shape[0], 4, 2, NUM_LEVELS, dtype=torch.float64)
    preds, masks = pred.numpy(), gt.numpy().view(np.uint8)
    for index, (cy, cx) in enumerate(split.tolist()):
        quadrants = ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, None)),
                     (slice(cy, None), slice(0, cx)), (slice(cy, None), slice(cx, None)))
        for quadrant, box in enumerate(quadrants):
            values, mask = preds[index][box], masks[index][box]
            if values.size == 0:
                continue
            every = torch.from_numpy(cv2.calcHist([values], [0], None, [NUM_LEVELS], [0, NUM_LEVELS])).reshape(-1)
            foreground = torch.from_numpy(cv2.calcHist([values], [0], mask, [NUM_LEVELS], [0, NUM_LEVELS])).reshape(-1)
            counts[index, quadrant, 0] = every - foreground
            counts[index, quadrant, 1] = foreground
    return counts


def _quadrant_counts_torch(pred: torch.Tensor, gt: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """(B, 4, 2, 256) float64 counts from one bincount over the batch."""
    batch, height, width = pred.shape
    device = pred.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    # index = value + 256·class + 512·(right) + 1024·(bottom) + 2048·image
    row_part = (rows[None, :] >= split[:, :1]).to(torch.int32) * 1024
    row_part += torch.arange(batch, device=device, dtype=torch.int32)[:, None] * 2048
    col_part = (cols[None, :] >= split[:, 1:]).to(torch.int32) * 512
    index = pred.to(torch.int32)
    index += gt.to(torch.int32) * 256
    index += row_part[:, :, None]
    index += col_part[:, None, :]
    counts = torch.bincount(index.view(-1), minlength=batch * 2048)
    counts = counts.view(batch, 2, 2, 2, NUM_LEVELS).double()  # image, bottom, right, class, value
    return counts.reshape(batch, 4, 2, NUM_LEVELS)


def joint_histogram(pred: torch.Tensor, gt: torch.Tensor, *, opencv: bool | None = None) -> ImageHistograms:
    """Histograms of a batch: ``pred`` uint8 B×H×W, ``gt`` bool B×H×W."""
    _, height, width = pred.shape
    split = foreground_split(gt)
    if use_opencv(pred, opencv) and height * width < 1 << 24:
        counts = _quadrant_counts_opencv(pred, gt, split)
    else:
        counts = _quadrant_counts_torch(pred, gt, split)
    values = normalized_values(counts.sum(1))
    return ImageHistograms(counts, split, values, height, width)


def mean_absolute_error(hist: ImageHistograms) -> torch.Tensor:
    """(B,) mean |p - gt| per image."""
    per_class = hist.class_counts
    error = per_class[:, 0] * hist.values + per_class[:, 1] * (1 - hist.values)
    return error.sum(1) / hist.num_pixels


def threshold_counts(hist: ImageHistograms) -> tuple[torch.Tensor, torch.Tensor]:
    """(true positives, false positives), each (B, 256) float64, for thresholds 255 down to 0.

    A pixel is positive at threshold ``t`` when ``trunc(p * 255) >= t`` (pysodmetrics' binning).
    """
    per_class = hist.class_counts  # (B, 2, 256)
    # Truncation, as numpy's astype(uint8) for values in [0, 255]; the clamp only touches values
    # absent from the image (outside its min..max), whose counts are zero.
    bins = (hist.values * 255).long().clamp(0, NUM_LEVELS - 1)
    binned = torch.zeros_like(per_class).scatter_add_(2, bins[:, None, :].expand_as(per_class), per_class)
    cumulative = binned.flip(2).cumsum(2)
    return cumulative[:, 1], cumulative[:, 0]


def adaptive_counts(hist: ImageHistograms) -> tuple[torch.Tensor, torch.Tensor]:
    """(true positives, false positives), each (B, 1), at the adaptive threshold min(2·mean(p), 1)."""
    per_class = hist.class_counts
    mean = (per_class.sum(1) * hist.values).sum(1, keepdim=True) / hist.num_pixels
    threshold = torch.clamp(2 * mean, max=1.0)
    positive = hist.values >= threshold  # (B, 256)
    true_positive = (per_class[:, 1] * positive).sum(1, keepdim=True)
    false_positive = (per_class[:, 0] * positive).sum(1, keepdim=True)
    return true_positive, false_positive


def fmeasure_from_counts(
    true_positive: torch.Tensor, false_positive: torch.Tensor, num_foreground: torch.Tensor, beta2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(precision, recall, F-measure) from counts of shape (B, K); ``num_foreground`` (B,).

    Precision is 0 where nothing is predicted, recall 0 for an empty mask, F 0 where P = R = 0.
    """
    predicted = true_positive + false_positive
    precision = true_positive / torch.where(predicted == 0, 1.0, predicted)
    recall = true_positive / num_foreground.clamp(min=1)[:, None]
    numerator = (1 + beta2) * precision * recall
    denominator = torch.where(numerator == 0, 1.0, beta2 * precision + recall)
    return precision, recall, numerator / denominator


def emeasure_from_counts(
    true_positive: torch.Tensor, false_positive: torch.Tensor, num_foreground: torch.Tensor, num_pixels: int
) -> torch.Tensor:
    """E-measure of binarised predictions from counts of shape (B, K); ``num_foreground`` (B,).

    The enhanced-alignment matrix takes four values (one per TP/FP/FN/TN region), so its sum is a
    weighted sum of the four region sizes.
    """
    num_fg = num_foreground[:, None]
    pred_fg = true_positive + false_positive
    pred_bg = num_pixels - pred_fg
    false_negative = num_fg - true_positive
    true_negative = pred_bg - false_negative
    mean_pred = pred_fg / num_pixels
    mean_gt = num_fg / num_pixels
    regions = (
        (true_positive, 1 - mean_pred, 1 - mean_gt),
        (false_positive, 1 - mean_pred, 0 - mean_gt),
        (false_negative, 0 - mean_pred, 1 - mean_gt),
        (true_negative, 0 - mean_pred, 0 - mean_gt),
    )
    enhanced_sum = torch.zeros_like(pred_fg)
    for size, pred_value, gt_value in regions:
        align = 2 * (pred_value * gt_value) / (pred_value**2 + gt_value**2 + EPS)
        enhanced_sum = enhanced_sum + (align + 1) ** 2 / 4 * size
    enhanced_sum = torch.where(num_fg == 0, pred_bg, torch.where(num_fg == num_pixels, pred_fg, enhanced_sum))
    return enhanced_sum / (num_pixels - 1 + EPS)


def adaptive_fmeasure(true_positive: torch.Tensor, false_positive: torch.Tensor, num_foreground: torch.Tensor,
                      beta2: float) -> torch.Tensor:
    """(B,) F-measure at the adaptive threshold (0 when no foreground pixel is found)."""
    return fmeasure_from_counts(true_positive, false_positive, num_foreground, beta2)[2][:, 0]
