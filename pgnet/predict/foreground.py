"""Foreground colour estimation for clean cut-outs: blur fusion (Forte & Pitié, ICIP 2021).

At a soft edge a pixel is a mix ``I = α·F + (1 − α)·B`` of the subject's colour F and the
background's B; a cut-out that keeps I as its colour shows a halo of the old background. Blur fusion
("Approximate fast foreground colour estimation", Forte & Pitié 2021) estimates F with box filters:

    F̂ = blur(α·F) / blur(α),   B̂ = blur((1 − α)·B) / blur(1 − α)        (local weighted means)
    F  = F̂ + α·(I − α·F̂ − (1 − α)·B̂)                                    (one correction step)

run twice: first with a large box (radius 90) and F = B = I, then with a small one (radius 6) from
the first pass's F and B̂. Every step is a box filter or a per-pixel operation, so the cost is linear
in the pixels and independent of the radii. The first pass's local means vary slowly (a 181-pixel
box), so they are computed on a copy reduced to keep its box at least 16 pixels wide and resized back
(bilinear); its correction step and the whole second pass run at full resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

LARGE_RADIUS = 90  # first pass: the paper's radius
SMALL_RADIUS = 6  # second pass
_EPS = 1e-5


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2·radius + 1)² box, edges reflected (float32 in, float32 out)."""
    side = 2 * int(radius) + 1
    return cv2.blur(image, (side, side), borderType=cv2.BORDER_REFLECT)


def _local_means(
    foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """(F̂, B̂): box means of F weighted by α and of B weighted by 1 − α (H×W×3 float32 each)."""
    weighted_fg = _box(foreground * alpha, radius)  # H×W×3
    weighted_bg = _box(background * (1.0 - alpha), radius)
    fg_weight = _box(alpha, radius)[..., None] + _EPS  # H×W×1 (cv2 drops a single channel)
    bg_weight = _box(1.0 - alpha, radius)[..., None] + _EPS
    return weighted_fg / fg_weight, weighted_bg / bg_weight


def blur_fusion_pass(
    image: np.ndarray, foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion step: (F, B̂), both H×W×3 float32.

    ``image``, ``foreground`` and ``background`` are H×W×3 float32 in [0, 1]; ``alpha`` is H×W×1
    float32 in [0, 1]. F is clipped to [0, 1]. For a radius above 8 the box means are computed at a
    reduced scale (box kept at least 17 pixels wide) and resized back.
    """
    height, width = alpha.shape[:2]
    scale = max(1, int(radius) // 8)
    if scale > 1 and min(height, width) >= 4 * scale:
        size = (max(1, round(width / scale)), max(1, round(height / scale)))

        def reduce(array: np.ndarray) -> np.ndarray:
            reduced = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
            return reduced.reshape(size[1], size[0], -1)

        small_fg, small_bg = _local_means(reduce(foreground), reduce(background), reduce(alpha), radius // scale)
        fg_mean = cv2.resize(small_fg, (width, height), interpolation=cv2.INTER_LINEAR)
        bg_mean = cv2.resize(small_bg, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        fg_mean, bg_mean = _local_means(foreground, background, alpha, radius)
    estimate = fg_mean + alpha * (image - alpha * fg_mean - (1.0 - alpha) * bg_mean)
    return np.clip(estimate, 0.0, 1.0, out=estimate), bg_mean


def estimate_foreground(
    image: np.ndarray, alpha: np.ndarray, large_radius: int = LARGE_RADIUS, small_radius: int = SMALL_RADIUS
) -> np.ndarray:
    """The subject's colour F of an H×W×3 uint8 RGB ``image`` given its H×W ``alpha``.

    ``alpha`` is float in [0, 1] or uint8 0..255. Returns H×W×3 uint8: at α = 1 it equals the image
    up to the correction step's rounding, at soft edges the background's colour is taken out.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != alpha.shape[:2]:
        raise ValueError(f"expected an H×W×3 image and an H×W alpha, got {image.shape} and {alpha.shape}")
    pixels = image.astype(np.float32) / 255.0
    weight = alpha.astype(np.float32)
    if alpha.dtype == np.uint8:
        weight /= 255.0
    weight = np.clip(weight, 0.0, 1.0).reshape(*alpha.shape[:2], 1)
    foreground, background = blur_fusion_pass(pixels, pixels, pixels, weight, large_radius)
    foreground, _ = blur_fusion_pass(pixels, foreground, background, weight, small_radius)
    return np.rint(foreground * 255.0).astype(np.uint8)
