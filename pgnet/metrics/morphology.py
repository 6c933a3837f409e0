"""Binary morphology on bool …×H×W tensors, identical on every device.

CPU tensors go through OpenCV (``opencv=None`` or True), whose kernels are several times faster
than anything built from torch ops; other devices, or ``opencv=False``, use torch ops. Both give
the same masks (the tests check it), so the backend is a speed choice only.

Border conventions are those of the metrics that use these: a square erosion may treat the outside
as background (Boundary IoU); dilations and the elliptic gradient ignore the outside (OpenCV's
default border for morphology).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np
import torch


def use_opencv(tensor: torch.Tensor, opencv: bool | None) -> bool:
    """Whether to run OpenCV kernels on ``tensor``: only for CPU tensors, unless ``opencv`` is False."""
    return tensor.device.type == "cpu" and opencv is not False


def _per_plane(mask: torch.Tensor, operation: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply a uint8 0/1 -> uint8 0/1 OpenCV operation to every H×W plane of a bool CPU tensor."""
    planes = mask.reshape(-1, *mask.shape[-2:]).contiguous().numpy().view(np.uint8)
    out = np.empty_like(planes)
    for index, plane in enumerate(planes):
        out[index] = operation(plane)
    return torch.from_numpy(out).view(torch.bool).view(mask.shape)


def count_per_plane(mask: torch.Tensor, *, opencv: bool | None = None) -> torch.Tensor:
    """(B,) float64 number of True pixels in each H×W plane of a bool B×H×W tensor."""
    if use_opencv(mask, opencv):
        planes = mask.contiguous().numpy().view(np.uint8)
        return torch.tensor([cv2.countNonZero(plane) for plane in planes], dtype=torch.float64)
    return mask.flatten(1).count_nonzero(1).double()


def _window_any(mask: torch.Tensor, radius: int, dim: int, outside: bool) -> torch.Tensor:
    """``out[i] = any(mask[i - radius : i + radius + 1])`` along ``dim``; pixels outside the tensor
    count as ``outside``. log2(window) passes by doubling the span of a running OR."""
    if radius == 0:
        return mask.clone()
    length = mask.shape[dim]
    window = 2 * radius + 1
    padded_shape = list(mask.shape)
    padded_shape[dim] = length + 2 * radius
    table = torch.full(padded_shape, outside, dtype=torch.bool, device=mask.device)
    table.narrow(dim, radius, length).copy_(mask)
    span = 1  # table[i] = any(padded[i : i + span])
    while span * 2 <= window:
        size = table.shape[dim] - span
        table = table.narrow(dim, 0, size) | table.narrow(dim, span, size)
        span *= 2
    return table.narrow(dim, 0, length) | table.narrow(dim, window - span, length)


def dilate_square(mask: torch.Tensor, radius: int, *, opencv: bool | None = None) -> torch.Tensor:
    """Dilation of bool …×H×W by a (2·radius+1)² square; the outside is ignored."""
    if use_opencv(mask, opencv):
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        return _per_plane(mask, lambda plane: cv2.dilate(plane, kernel))
    return _window_any(_window_any(mask, radius, -1, False), radius, -2, False)


def erode_square(mask: torch.Tensor, radius: int, *, opencv: bool | None = None) -> torch.Tensor:
    """Erosion of bool …×H×W by a (2·radius+1)² square; the outside counts as background, so pixels
    within ``radius`` of the image border are eroded too."""
    if use_opencv(mask, opencv):
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        return _per_plane(
            mask, lambda plane: cv2.erode(plane, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        )
    background = ~mask
    return ~_window_any(_window_any(background, radius, -1, True), radius, -2, True)


@functools.lru_cache(maxsize=64)
def ellipse_kernel(radius: int) -> np.ndarray:
    """OpenCV's elliptic structuring element of size (2·radius+1)², uint8 0/1."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _dilate_ellipse_torch(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilation by :func:`ellipse_kernel` (outside ignored): the OR over the kernel's rows of the
    row-wise dilation by that row's half width, shifted by the row's offset."""
    kernel = ellipse_kernel(radius)
    half_widths = [(int(row.sum()) - 1) // 2 for row in kernel]  # rows are centred runs of ones
    rows_by_width = {width: _window_any(mask, width, -1, False) for width in set(half_widths)}
    height = mask.shape[-2]
    out = rows_by_width[half_widths[radius]].clone()  # offset 0
    for offset in range(1, min(radius, height - 1) + 1):
        below = rows_by_width[half_widths[radius + offset]]  # out[y] |= rows[y + offset]
        out[..., : height - offset, :] |= below[..., offset:, :]
        above = rows_by_width[half_widths[radius - offset]]  # out[y] |= rows[y - offset]
        out[..., offset:, :] |= above[..., : height - offset, :]
    return out


def elliptic_gradient(mask: torch.Tensor, radius: int, *, opencv: bool | None = None) -> torch.Tensor:
    """Where the morphological gradient of bool …×H×W with :func:`ellipse_kernel` is non-zero, i.e.
    pixels whose kernel window (inside the image) holds both classes; OpenCV's
    ``morphologyEx(mask, MORPH_GRADIENT, kernel) > 0``."""
    if use_opencv(mask, opencv):
        kernel = ellipse_kernel(radius)
        return _per_plane(mask, lambda plane: cv2.morphologyEx(plane, cv2.MORPH_GRADIENT, kernel))
    return _dilate_ellipse_torch(mask, radius) & _dilate_ellipse_torch(~mask, radius)
