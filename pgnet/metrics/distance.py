"""Exact Euclidean distances to a binary foreground, capped, on any device.

On the CPU OpenCV's exact distance transform (``DIST_MASK_PRECISE``, Felzenszwalb-Huttenlocher) does
the work; its float32 distances are turned back into exact integer squared distances, which is
exact while the squared distance stays well below 2^22 (the cap keeps it there). On other devices a
separable torch version runs: exact column distances by running max/min of foreground row indices,
then the row pass by brute force over column offsets up to the cap, stopping as soon as no pixel can
improve.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def _squared_distance_opencv(foreground: torch.Tensor, cap: int) -> torch.Tensor:
    background = (~foreground).to(torch.uint8).numpy()
    distance = torch.from_numpy(cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    squared = distance.double().square_().round_()
    # Beyond the cap the float32 distance may not round back to the exact integer: saturate.
    return squared.masked_fill_((distance > cap + 0.5) | (squared > cap * cap), cap * cap + 1).long()


def _squared_distance_torch(foreground: torch.Tensor, cap: int) -> torch.Tensor:
    height, width = foreground.shape
    device = foreground.device
    beyond = cap + 1
    rows = torch.arange(height, device=device)[:, None].expand(height, width)
    none_above = torch.full_like(rows, -(2 * beyond + height))
    above = torch.where(foreground, rows, none_above).cummax(0).values
    none_below = torch.full_like(rows, 2 * beyond + 2 * height)
    below = torch.where(foreground, rows, none_below).flip(0).cummin(0).values.flip(0)
    column_distance = torch.minimum(rows - above, below - rows).clamp(max=beyond)
    column_squared = column_distance * column_distance
    squared = column_squared.clone()
    for offset in range(1, min(cap, width - 1) + 1):
        if offset % 8 == 1 and offset * offset > int(squared.max()):
            break
        shifted = column_squared[:, :-offset] + offset * offset
        squared[:, offset:] = torch.minimum(squared[:, offset:], shifted)
        shifted = column_squared[:, offset:] + offset * offset
        squared[:, :-offset] = torch.minimum(squared[:, :-offset], shifted)
    return torch.where(squared <= cap * cap, squared, cap * cap + 1)


def squared_distance_to_foreground(foreground: torch.Tensor, cap: int, *, use_opencv: bool | None = None
                                   ) -> torch.Tensor:
    """(H, W) int64 squared Euclidean distance from each pixel to the nearest foreground pixel.

    Exact up to ``cap`` pixels; farther pixels (and every pixel when there is no foreground) get
    ``cap² + 1``. ``use_opencv`` (default: on CPU tensors) picks the implementation.
    """
    if foreground.dim() != 2:
        raise ValueError(f"expected an H×W mask, got shape {tuple(foreground.shape)}")
    if not bool(foreground.any()):
        return torch.full(foreground.shape, cap * cap + 1, dtype=torch.long, device=foreground.device)
    if use_opencv is None:
        use_opencv = foreground.device.type == "cpu"
    if use_opencv:
        return _squared_distance_opencv(foreground.cpu(), cap).to(foreground.device)
    return _squared_distance_torch(foreground, cap)


def distance_to_foreground(foreground: torch.Tensor, cap: int, *, use_opencv: bool | None = None
                           ) -> torch.Tensor:
    """(H, W) float64 Euclidean distance to the nearest foreground pixel, bit-identical to
    ``scipy.ndimage.distance_transform_edt`` up to ``cap``, ``inf`` beyond."""
    squared = squared_distance_to_foreground(foreground, cap, use_opencv=use_opencv)
    distance = squared.double().sqrt_()
    return distance.masked_fill_(squared > cap * cap, float("inf"))


def nearest_foreground_near_boundary(foreground: torch.Tensor, radius: int = 3
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest foreground pixel of every background pixel within Chebyshev distance ``radius``.

    Returns (rows, cols, nearest rows, nearest cols) as 1-D int64 tensors. Among equally near
    foreground pixels the one with the smallest column, then the smallest row, is chosen: the choice
    scipy's ``distance_transform_edt(..., return_indices=True)`` makes.
    """
    height, width = foreground.shape
    near = _dilate_square(foreground, radius) & ~foreground
    rows, cols = near.nonzero(as_tuple=True)
    pad = radius + 1
    padded_width = width + 2 * pad
    padded = torch.zeros(height + 2 * pad, padded_width, dtype=torch.bool, device=foreground.device)
    padded[pad:pad + height, pad:pad + width] = foreground
    flat = padded.view(-1)
    base = (rows + pad) * padded_width + (cols + pad)
    found_dy = torch.zeros_like(rows)
    found_dx = torch.zeros_like(rows)
    pending = torch.arange(rows.numel(), device=foreground.device)
    for level in _offset_levels(radius):
        if pending.numel() == 0:
            break
        dy = torch.tensor([o[0] for o in level], device=foreground.device)
        dx = torch.tensor([o[1] for o in level], device=foreground.device)
        candidates = flat[base[pending][:, None] + (dy * padded_width + dx)[None, :]]
        hit = candidates.any(1)
        first = candidates.to(torch.uint8).argmax(1)  # first True: the preferred offset
        resolved = pending[hit]
        found_dy[resolved] = dy[first[hit]]
        found_dx[resolved] = dx[first[hit]]
        pending = pending[~hit]
    return rows, cols, rows + found_dy, cols + found_dx


def _offset_levels(radius: int) -> list[list[tuple[int, int]]]:
    """Offsets (dy, dx) with 0 < dy² + dx² <= 2·radius², grouped by squared length, each group
    ordered by column then row offset."""
    reach = 2 * radius * radius
    span = int(np.floor(np.sqrt(reach)))
    by_length: dict[int, list[tuple[int, int]]] = {}
    for dy in range(-span, span + 1):
        for dx in range(-span, span + 1):
            length = dy * dy + dx * dx
            if 0 < length <= reach:
                by_length.setdefault(length, []).append((dy, dx))
    return [sorted(by_length[length], key=lambda o: (o[1], o[0])) for length in sorted(by_length)]


def _dilate_square(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by a (2·radius+1)² square; pixels outside the image count as background."""
    horizontal = mask.clone()
    for shift in range(1, radius + 1):
        horizontal[:, shift:] |= mask[:, :-shift]
        horizontal[:, :-shift] |= mask[:, shift:]
    result = horizontal.clone()
    for shift in range(1, radius + 1):
        result[shift:] |= horizontal[:-shift]
        result[:-shift] |= horizontal[shift:]
    return result
