"""Deterministic synthetic salient-object images: the built-in dataset for demos and tests.

Each sample is one to four salient objects (blobs, stars, ellipses, rings and frames with holes,
thin wire structures) with their own saturated colours and textures, on a cluttered background of
muted colour noise, stripes and distractor shapes that are not salient. Geometry is drawn in
coordinates relative to the image, so one seed gives the same scene at every resolution.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pgnet.data.transforms import SampleTransform, build_eval_transform, to_sample
from pgnet.errors import UserError
from pgnet.writing import write_image

MAX_SYNTHETIC_SIDE = 8192

_Shape = Callable[[np.random.Generator, np.ndarray, tuple[float, float], float], None]


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not (8 <= height <= MAX_SYNTHETIC_SIDE and 8 <= width <= MAX_SYNTHETIC_SIDE):
        raise UserError(f"synthetic size must be between 8 and {MAX_SYNTHETIC_SIDE} per side, got {size}")
    return height, width


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a synthetic dataset seeded with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], H×W×channels float32: a coarse random grid upsampled."""
    grid_h = max(2, round(cells * height / max(height, width)))
    grid_w = max(2, round(cells * width / max(height, width)))
    grid = rng.random((grid_h, grid_w, channels), dtype=np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(noise.reshape(height, width, channels), 0.0, 1.0)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random sinusoidal grating in [-1, 1], H×W float32 (period relative to the image)."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.01, 0.08) * max(height, width)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    phase = (xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))) * np.float32(2 * np.pi / period)
    return np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))


def _hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """An RGB colour (float32, 0..255) from HSV components in [0, 1]."""
    hsv = np.array([[[hue * 180.0, saturation * 255.0, value * 255.0]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(3).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered, muted background, H×W×3 float32 0..255."""
    base = _hsv_colour(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75))
    noise = _smooth_noise(rng, height, width, cells=int(rng.integers(4, 12)), channels=3) - 0.5
    image = base + noise * np.float32(rng.uniform(40, 90))
    image += _stripes(rng, height, width)[..., None] * np.float32(rng.uniform(5, 25))
    # Distractors: unsalient shapes in background-like colours.
    scale = min(height, width)
    for _ in range(int(rng.integers(3, 9))):
        colour = _hsv_colour(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.8)).tolist()
        x, y = int(rng.random() * width), int(rng.random() * height)
        extent = max(1, int(rng.uniform(0.03, 0.15) * scale))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + extent, y + extent // 2), colour, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), extent // 2, colour, -1)
        else:
            end = (int(rng.random() * width), int(rng.random() * height))
            cv2.line(image, (x, y), end, colour, max(1, int(0.004 * scale)))
    return image


def _object_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A saturated colour with its own pattern, H×W×3 float32 0..255."""
    colour = _hsv_colour(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    texture = np.broadcast_to(colour, (height, width, 3)).copy()
    pattern = rng.integers(3)
    if pattern == 0:
        texture += _stripes(rng, height, width)[..., None] * np.float32(rng.uniform(10, 45))
    elif pattern == 1:
        second = _hsv_colour(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        weight = _smooth_noise(rng, height, width, cells=int(rng.integers(2, 6)), channels=1)
        texture = texture * (1 - weight) + second * weight
    else:
        texture += (_smooth_noise(rng, height, width, cells=int(rng.integers(8, 24)), channels=3) - 0.5) * 60
    return texture


def _polygon(center: np.ndarray, radii: np.ndarray, angles: np.ndarray, stretch: np.ndarray) -> np.ndarray:
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None] * stretch
    return np.round(center + points).astype(np.int32)


def _draw_blob(rng, canvas, center, radius) -> None:
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    radii = np.ones_like(angles)
    for harmonic in range(2, 6):
        radii += rng.uniform(-0.25, 0.25) / harmonic * 2 * np.sin(harmonic * angles + rng.uniform(0, 2 * np.pi))
    stretch = np.array([rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)])
    cv2.fillPoly(canvas, [_polygon(center, radius * np.clip(radii, 0.3, None), angles, stretch)], 255)


def _draw_star(rng, canvas, center, radius) -> None:
    spikes = int(rng.integers(4, 9))
    angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False) + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * spikes) % 2 == 0, 1.0, rng.uniform(0.3, 0.6))
    cv2.fillPoly(canvas, [_polygon(center, radius * radii, angles, np.ones(2))], 255)


def _draw_ellipse_or_ring(rng, canvas, center, radius) -> None:
    axes = (max(1, int(radius * rng.uniform(0.5, 1.0))), max(1, int(radius * rng.uniform(0.3, 1.0))))
    angle = rng.uniform(0, 180)
    centre = (int(center[0]), int(center[1]))
    cv2.ellipse(canvas, centre, axes, angle, 0, 360, 255, -1)
    if rng.random() < 0.6:  # a hole: a ring or a pierced disc
        fraction = rng.uniform(0.3, 0.7)
        hole_axes = (max(1, int(axes[0] * fraction)), max(1, int(axes[1] * fraction)))
        cv2.ellipse(canvas, centre, hole_axes, angle, 0, 360, 0, -1)


def _draw_frame(rng, canvas, center, radius) -> None:
    size = (radius * rng.uniform(1.0, 2.0), radius * rng.uniform(1.0, 2.0))
    angle = rng.uniform(0, 90)
    outer = cv2.boxPoints(((float(center[0]), float(center[1])), size, angle))
    cv2.fillPoly(canvas, [np.round(outer).astype(np.int32)], 255)
    fraction = rng.uniform(0.4, 0.75)
    inner = cv2.boxPoints(((float(center[0]), float(center[1])), (size[0] * fraction, size[1] * fraction), angle))
    cv2.fillPoly(canvas, [np.round(inner).astype(np.int32)], 0)


def _draw_wire(rng, canvas, center, radius) -> None:
    """Thin structure: a branching tree of lines one to a few pixels wide."""
    thickness = max(1, round(radius * rng.uniform(0.02, 0.06)))
    stack = [(center, rng.uniform(0, 2 * np.pi), radius, 0)]
    while stack:
        start, heading, length, depth = stack.pop()
        end = start + length * np.array([np.cos(heading), np.sin(heading)])
        cv2.line(canvas, tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int)), 255, thickness)
        if depth < 3:
            for turn in (-1, 1):
                stack.append((end, heading + turn * rng.uniform(0.3, 1.0), length * rng.uniform(0.5, 0.75), depth + 1))
    cv2.circle(canvas, (int(center[0]), int(center[1])), thickness * 3, 255, -1)


_SHAPES: tuple[_Shape, ...] = (_draw_blob, _draw_star, _draw_ellipse_or_ring, _draw_frame, _draw_wire)


def make_sample(seed: int, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic synthetic pair: (image H×W×3 uint8 RGB, mask H×W uint8 0/255).

    ``size`` is a side length (square) or (height, width), each at most 8192.
    """
    height, width = _size_hw(size)
    rng = np.random.default_rng(seed)
    image = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    scale = min(height, width)
    for _ in range(int(rng.choice([1, 1, 2, 2, 3, 4]))):
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        center = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        radius = rng.uniform(0.08, 0.3) * scale
        # The texture draws a resolution-dependent number of values: give it its own stream so the
        # geometry of later objects does not depend on the resolution.
        texture_rng = np.random.default_rng(int(rng.integers(2**63)))
        object_mask = np.zeros_like(mask)
        shape(rng, object_mask, center, radius)
        rows, cols = np.nonzero(object_mask)
        if rows.size == 0:
            continue
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        texture = _object_texture(texture_rng, int(bottom - top), int(right - left))
        inside = object_mask[top:bottom, left:right] > 0
        image[top:bottom, left:right][inside] = texture[inside]
        mask |= object_mask
    if not mask.any():  # every shape fell outside: keep at least one object
        cv2.circle(mask, (width // 2, height // 2), max(1, scale // 6), 255, -1)
        image[mask > 0] = _hsv_colour(rng.random(), 0.9, 0.9)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticDataset(Dataset):
    """``n`` synthetic samples of ``size`` from ``seed``; items are dicts like :class:`SODDataset`'s."""

    def __init__(
        self, n: int, size: int | tuple[int, int] = 512, seed: int = 0, transform: SampleTransform | None = None
    ) -> None:
        if n < 1:
            raise UserError(f"a synthetic dataset needs n >= 1, got {n}")
        self.n = int(n)
        self.size = _size_hw(size)
        self.seed = int(seed)
        self.transform = transform if transform is not None else build_eval_transform(None, resize_mask=True)
        self.name = "synthetic"
        self.skipped = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | tuple[int, int]]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        image, mask = make_sample(sample_seed(self.seed, index), self.size)
        return to_sample(self.transform, image, mask, name=f"synthetic_{index:06d}", size=self.size)


def _write_sample(job: tuple[Path, int, int, tuple[int, int], int, str]) -> None:
    out, seed, index, size, quality, prefix = job
    image, mask = make_sample(sample_seed(seed, index), size)
    name = f"{prefix}_{index:06d}"
    write_image(out / "image" / f"{name}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    write_image(out / "mask" / f"{name}.png", mask)


def write_synthetic_dataset(
    out: str | Path, n: int, size: int | tuple[int, int], seed: int = 0, quality: int = 95, jobs: int = 1,
    prefix: str = "synthetic",
) -> Path:
    """Write ``n`` samples as OUT/image/<prefix>_<index>.jpg and OUT/mask/<prefix>_<index>.png.

    Sample i equals item i of ``SyntheticDataset(n, size, seed)`` (before JPEG compression at
    ``quality``); ``jobs`` > 1 writes in that many processes. The generic layout: a config reads it
    as ``{name: generic, root: OUT}``.
    """
    if n < 1:
        raise UserError(f"a synthetic dataset needs n >= 1, got {n}")
    out = Path(out)
    for folder in ("image", "mask"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    work = [(out, seed, index, _size_hw(size), quality, prefix) for index in range(n)]
    if jobs > 1 and n > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, os.cpu_count() or 1)) as pool:
            list(pool.map(_write_sample, work, chunksize=4))
    else:
        for job in work:
            _write_sample(job)
    return out


def make_soft_composite(
    seed: int, size: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A subject with a wide, wavy soft edge over a cluttered background, with the truth behind it.

    Returns (composite H×W×3 uint8, alpha H×W float32 in [0, 1], foreground and background H×W×3
    float32 0..255), where composite = α·foreground + (1 − α)·background, rounded: a test scene for
    cut-outs and foreground colour estimation. The soft band is about 12 % of the subject's radius.
    """
    height, width = _size_hw(size)
    rng = np.random.default_rng(seed)
    background = np.clip(_background(rng, height, width), 0, 255)
    foreground = np.clip(_object_texture(rng, height, width), 0, 255)
    radius = 0.32 * min(height, width)
    ys = np.arange(height, dtype=np.float32)[:, None] - height * 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] - width * 0.5
    angle = np.arctan2(ys, xs)
    waves = sum(rng.uniform(0.02, 0.05) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (3, 7, 23))
    boundary = radius * (1.0 + waves)  # H×W: the edge's distance from the centre in each direction
    alpha = np.clip((boundary - np.hypot(ys, xs)) / (0.12 * radius) + 0.5, 0.0, 1.0).astype(np.float32)
    composite = alpha[..., None] * foreground + (1.0 - alpha[..., None]) * background
    return np.rint(composite).astype(np.uint8), alpha, foreground.astype(np.float32), background.astype(np.float32)
