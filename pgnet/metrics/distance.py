"""Exact Euclidean distances to a binary foreground, and nearest foreground pixels, on any device.

On the CPU OpenCV's exact distance transform (``DIST_MASK_PRECISE``, Felzenszwalb-Huttenlocher) does
the work. It returns float32 ``sqrt(n)`` for the integer squared distance ``n``; squaring and
rounding recovers ``n`` exactly while ``n`` is far below 2^22 (the cap keeps it there). On other devices (or with
``opencv=False``) a separable torch version runs: exact column distances from running max/min of
foreground row indices, then the row pass by brute force over column offsets up to the cap,
stopping as soon as no pixel can improve.
"""

from __future__ import annotations

import math

import cv2
import torch

from pgnet.metrics.morphology import dilate_square, use_opencv


def _squared_distance_opencv(foreground: torch.Tensor, cap: int) -> torch.Tensor:
    background = (~foreground).contiguous().numpy().view("uint8")
    distance = torch.from_numpy(cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    # float32 holds the squares exactly; beyond the cap the rounding may be off, but those saturate.
    return distance.mul_(distance).round_().clamp_(max=cap * cap + 1).int()


def _squared_distance_torch(foreground: torch.Tensor, cap: int) -> torch.Tensor:
    """(H, W) int64 exact squared distances up to ``cap²``, ``cap² + 1`` beyond."""
    height, width = foreground.shape
    device = foreground.device
    beyond = cap + 1
    rows = torch.arange(height, device=device)[:, None].expand(height, width)
    none_above = torch.full_like(rows, -(2 * beyond + height))
    above = torch.where(foreground, rows, none_above).cummax(0).values  # nearest foreground row at or above
    none_below = torch.full_like(rows, 2 * beyond + 2 * height)
    below = torch.where(foreground, rows, none_below).flip(0).cummin(0).values.flip(0)
    column_distance = torch.minimum(rows - above, below - rows).clamp_(max=beyond)
    column_squared = column_distance * column_distance
    squared = column_squared.clone()
    for offset in range(1, min(cap, width - 1) + 1):
        if offset % 8 == 1 and offset * offset > int(squared.max()):
            break  # no farther column can bring any pixel closer
        shifted = column_squared[:, :-offset] + offset * offset
        torch.minimum(squared[:, offset:], shifted, out=squared[:, offset:])
        shifted = column_squared[:, offset:] + offset * offset
        torch.minimum(squared[:, :-offset], shifted, out=squared[:, :-offset])
    return squared.clamp_(max=cap * cap + 1)


def squared_distance_to_foreground(
    foreground: torch.Tensor, cap: int, *, opencv: bool | None = None
) -> torch.Tensor:
    """(H, W) integer squared Euclidean distance to the nearest pixel of bool H×W ``foreground``.

    Exact up to ``cap²``; ``cap² + 1`` beyond, and everywhere when there is no foreground.
    """
    if foreground.dim() != 2:
        raise ValueError(f"expected an H×W mask, got shape {tuple(foreground.shape)}")
    if not bool(foreground.any()):
        return torch.full(foreground.shape, cap * cap + 1, dtype=torch.int32, device=foreground.device)
    if use_opencv(foreground, opencv):
        return _squared_distance_opencv(foreground, cap)
    return _squared_distance_torch(foreground, cap)


def distance_to_foreground(foreground: torch.Tensor, cap: int, *, opencv: bool | None = None) -> torch.Tensor:
    """(H, W) float64 Euclidean distance to the nearest pixel of bool H×W ``foreground``: ``sqrt`` of
    the exact squared distance (scipy's ``distance_transform_edt`` agrees to an ulp) up to ``cap``,
    ``inf`` beyond."""
    squared = squared_distance_to_foreground(foreground, cap, opencv=opencv)
    return squared.double().sqrt_().masked_fill_(squared > cap * cap, math.inf)


def _preferred_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with 0 < dy² + dx² <= 2·radius², nearest first, ties by column offset, then
    row offset: the preference of scipy's ``distance_transform_edt`` among equally near pixels."""
    span = math.isqrt(2 * radius * radius)
    offsets = [(dy, dx) for dy in range(-span, span + 1) for dx in range(-span, span + 1)]
    offsets = [(dy, dx) for dy, dx in offsets if 0 < dy * dy + dx * dx <= 2 * radius * radius]
    return sorted(offsets, key=lambda o: (o[0] * o[0] + o[1] * o[1], o[1], o[0]))


def nearest_foreground_near_boundary(
    foreground: torch.Tensor, radius: int = 3, *, opencv: bool | None = None, chunk: int = 1 << 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest foreground pixel of every background pixel within Chebyshev distance ``radius`` of it.

    Returns (rows, cols, nearest rows, nearest cols), 1-D int64 tensors. Among equally near
    foreground pixels the one with the smallest column, then the smallest row, is chosen: the choice
    of ``scipy.ndimage.distance_transform_edt(..., return_indices=True)``. Such a pixel has a
    foreground pixel within squared distance 2·radius², so it looks up all those offsets at once,
    ``chunk`` pixels at a time, and takes the first one that holds foreground.
    """
    height, width = foreground.shape
    device = foreground.device
    near = dilate_square(foreground, radius, opencv=opencv) & ~foreground
    rows, cols = near.nonzero(as_tuple=True)
    offsets = torch.tensor(_preferred_offsets(radius), device=device)  # (L, 2)
    pad = math.isqrt(2 * radius * radius)
    padded_width = width + 2 * pad
    padded = torch.zeros(height + 2 * pad, padded_width, dtype=torch.uint8, device=device)
    padded[pad : pad + height, pad : pad + width] = foreground
    flat = padded.view(-1)
    index_type = torch.int32 if padded.numel() < 1 << 31 else torch.int64
    steps = (offsets[:, 0] * padded_width + offsets[:, 1]).to(index_type)  # (L,) flat offsets
    base = ((rows + pad) * padded_width + (cols + pad)).to(index_type)  # (K,) flat index of each pixel
    choice = torch.empty_like(rows)
    for start in range(0, rows.numel(), chunk):
        index = base[start : start + chunk, None] + steps[None, :]  # (k, L)
        hits = flat.index_select(0, index.view(-1)).view(index.shape)
        choice[start : start + chunk] = hits.argmax(1)  # the first foreground offset
    nearest = offsets[choice]  # (K, 2)
    return rows, cols, rows + nearest[:, 0], cols + nearest[:, 1]
