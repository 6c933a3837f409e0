"""Boundary metrics of high-resolution segmentation: Boundary IoU and mean Boundary Accuracy.

pysodmetrics 1.6 has neither, so these follow the papers' reference code, on binarised maps
(prediction and mask both ``> 128`` on the 0..255 scale; the prediction is not min-max normalised):

- **BIoU**, Boundary IoU (Cheng et al., CVPR 2021; ``boundary_iou`` of the official API): the
  boundary of a mask is its pixels within ``d`` of the background, d the Chebyshev distance, the
  image border counting as background (erosion by a 3×3 square ``d`` times, on a zero-padded mask),
  ``d = max(1, round(0.02 · image diagonal))``. BIoU = |Gd ∩ Pd| / |Gd ∪ Pd|; 1 when both are empty.
- **mBA**, mean Boundary Accuracy (CascadePSP, Cheng et al., CVPR 2020, ``compute_boundary_acc``):
  for radii ``r_i = 1 + int((max_r - 1) / 5 · i)``, i = 0..4, ``max_r = (H + W) / 300``, the
  boundary region is where the mask's morphological gradient with OpenCV's elliptic kernel of size
  2r+1 is non-zero (outside pixels ignored); the accuracy is the fraction of region pixels where the
  prediction equals the mask (1 for an empty region: an empty or full mask); mBA is the mean of the
  five accuracies.
"""

from __future__ import annotations

import math

import torch

BOUNDARY_THRESHOLD = 128  # both maps are binarised at > 128 (0..255 scale)
BIOU_DILATION_RATIO = 0.02
MBA_STEPS = 5


def biou_dilation(height: int, width: int, ratio: float = BIOU_DILATION_RATIO) -> int:
    """Boundary width ``d`` of Boundary IoU: ``max(1, round(ratio · diagonal))`` (half to even)."""
    return max(1, round(ratio * math.sqrt(height * height + width * width)))


def _window_all(mask: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """``out[i] = all(mask[i - radius : i + radius + 1])`` along ``dim``; outside counts as False."""
    length = mask.shape[dim]
    window = 2 * radius + 1
    padded_shape = list(mask.shape)
    padded_shape[dim] = length + 2 * radius
    table = torch.zeros(padded_shape, dtype=torch.bool, device=mask.device)
    table.narrow(dim, radius, length).copy_(mask)
    span = 1  # table[i] = all(padded[i : i + span])
    while span * 2 <= window:
        size = table.shape[dim] - span
        table = table.narrow(dim, 0, size) & table.narrow(dim, span, size)
        span *= 2
    return table.narrow(dim, 0, length) & table.narrow(dim, window - span, length)


def inner_boundary(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels of ``mask`` (bool …×H×W) within Chebyshev distance ``width`` of the background or the
    image border: ``mask`` minus its erosion by a (2·width+1)² square."""
    eroded = _window_all(_window_all(mask, width, -1), width, -2)
    return mask & ~eroded


def boundary_iou(pred: torch.Tensor, gt: torch.Tensor, dilation_ratio: float = BIOU_DILATION_RATIO) -> torch.Tensor:
    """(B,) float64 Boundary IoU of uint8 B×H×W predictions against bool B×H×W masks."""
    width = biou_dilation(gt.shape[-2], gt.shape[-1], dilation_ratio)
    gt_boundary = inner_boundary(gt, width)
    pred_boundary = inner_boundary(pred > BOUNDARY_THRESHOLD, width)
    intersection = (gt_boundary & pred_boundary).count_nonzero((-2, -1)).double()
    union = (gt_boundary | pred_boundary).count_nonzero((-2, -1)).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def mba_radii(height: int, width: int, steps: int = MBA_STEPS) -> list[int]:
    """CascadePSP's radii: ``1 + int((max_r - 1) / steps · i)`` with ``max_r = (H + W) / 300``."""
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / steps * i) for i in range(steps)]


def _distance_to_other_class(mask: torch.Tensor, limit: int, dtype: torch.dtype) -> torch.Tensor:
    """Distance along the last dim from each pixel to the nearest pixel of the other class (the
    nearest end of its run), clamped to ``limit``; the image ends do not count as the other class."""
    width = mask.shape[-1]
    columns = torch.arange(width, device=mask.device, dtype=dtype).expand(mask.shape)
    changes = mask[..., 1:] != mask[..., :-1]  # a run starts at x + 1
    starts = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    starts[..., 1:] = changes
    run_start = torch.where(starts, columns, 0).cummax(-1).values
    left = (columns - run_start + 1).masked_fill_(run_start == 0, limit)
    ends = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    ends[..., :-1] = changes
    run_end = torch.where(ends, columns, width - 1).flip(-1).cummin(-1).values.flip(-1)
    right = (run_end + 1 - columns).masked_fill_(run_end == width - 1, limit)
    return torch.minimum(left, right).clamp_(max=limit)


def kernel_reach(gt: torch.Tensor, max_radius: int) -> torch.Tensor:
    """Per pixel, ``4·min(dx² - |dx| + dy²)`` over pixels of the other class at offset (dy, dx) with
    |dy| <= max_radius, where dx = 0 counts as ``4·dy² - 1``; a large value where there is none.

    OpenCV's elliptic kernel of radius r holds exactly the offsets with ``|dx| <= round(sqrt(r² -
    dy²))``, i.e. ``dx² - |dx| + dy² < r²``, or dx = 0 and |dy| <= r. So the kernel window of radius
    r around a pixel holds the other class iff its reach is below ``4·r² + 1``. One pass over rows
    suffices: from a row whose pixel above/below is of the same class the nearest other-class pixel
    is its run end; from a row whose pixel is of the other class it is that pixel, and those rows
    are covered by the vertical run distance (their run-end candidates are larger and never win).
    """
    limit = max_radius + 1
    dtype = torch.int16 if max_radius <= 40 else torch.int32  # keeps (2·limit)² + 4·r² in range
    sentinel = 1 << 14 if dtype == torch.int16 else 1 << 28
    horizontal = _distance_to_other_class(gt, limit, dtype)
    vertical = _distance_to_other_class(gt.transpose(-1, -2).contiguous(), limit, dtype).transpose(-1, -2)
    odd = 2 * horizontal - 1
    cost = (odd * odd).masked_fill_(horizontal >= limit, sentinel)
    reach = torch.minimum(cost, (4 * vertical * vertical - 1).masked_fill_(vertical >= limit, sentinel))
    for dy in range(1, min(max_radius, gt.shape[-2] - 1) + 1):
        offset = 4 * dy * dy
        torch.minimum(reach[..., dy:, :], cost[..., :-dy, :] + offset, out=reach[..., dy:, :])
        torch.minimum(reach[..., :-dy, :], cost[..., dy:, :] + offset, out=reach[..., :-dy, :])
    return reach


def boundary_regions(gt: torch.Tensor, radii: list[int]) -> list[torch.Tensor]:
    """For each radius, the bool …×H×W region where the morphological gradient of ``gt`` with the
    elliptic kernel is non-zero: pixels whose kernel window (inside the image) holds both classes."""
    reach = kernel_reach(gt, max(radii))
    return [reach < 4 * radius * radius + 1 for radius in radii]


def mean_boundary_accuracy(pred: torch.Tensor, gt: torch.Tensor, steps: int = MBA_STEPS) -> torch.Tensor:
    """(B,) float64 mBA of uint8 B×H×W predictions against bool B×H×W masks."""
    radii = mba_radii(gt.shape[-2], gt.shape[-1], steps)
    correct = (pred > BOUNDARY_THRESHOLD) == gt
    accuracies = []
    for region in boundary_regions(gt, radii):
        size = region.count_nonzero((-2, -1)).double()
        hits = (region & correct).count_nonzero((-2, -1)).double()
        accuracies.append(torch.where(size > 0, hits / size.clamp(min=1), 1.0))
    return torch.stack(accuracies, 0).mean(0)
