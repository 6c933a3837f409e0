"""Pictures of what the network does: predictions and the CMGM grafting attention.

Functions return H×W×3 uint8 RGB arrays (TensorBoard's ``dataformats="HWC"``, or ``cv2.imwrite``
after RGB→BGR).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgnet.models.cmgm import CMGM


def to_uint8_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised 3×H×W tensor back to H×W×3 uint8 RGB (``mean``/``std`` on the 0–255 scale)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    pixels = image.detach().float().cpu() * std_t + mean_t
    return pixels.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def gray_to_rgb(values: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A map in [0, 1] (H×W, or 1×H×W) as a gray RGB image, optionally resized to (H, W)."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = np.squeeze(array).astype(np.float32)
    if size is not None and array.shape != tuple(size):
        array = cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    gray = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Overlay a heat map (any size, normalised to its own range) on an RGB image."""
    heat = cv2.resize(heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colored = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)


def tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Arrange equally sized RGB images in a grid with white gaps."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full(
        (len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            canvas[i * (height + gap) : i * (height + gap) + height, j * (width + gap) : j * (width + gap) + width] = (
                picture
            )
    return canvas


def prediction_panel(
    image: np.ndarray, mask: torch.Tensor, pred: torch.Tensor, side_cnn: torch.Tensor, side_swin: torch.Tensor
) -> np.ndarray:
    """Input | ground truth | prediction | CNN side | Swin side (logits are passed through sigmoid)."""
    size = image.shape[:2]
    tiles = [image, gray_to_rgb(mask, size)]
    tiles += [gray_to_rgb(torch.sigmoid(t.float()), size) for t in (pred, side_cnn, side_swin)]
    return tile([tiles])


def query_points(mask_on_grid: np.ndarray) -> dict[str, tuple[int, int]]:
    """Query positions on the graft grid: deepest inside the object, on its boundary, deepest in the
    background. Missing regions (an empty or full mask) are left out."""
    binary = (mask_on_grid > 0.5).astype(np.uint8)
    points: dict[str, tuple[int, int]] = {}
    padded = np.pad(binary, 1)  # distances to the border count as distances to background
    if binary.any():
        inside = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
        points["object"] = tuple(int(v) for v in np.unravel_index(np.argmax(inside), inside.shape))
        edges = binary - cv2.erode(binary, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        if edges.any():
            ys, xs = np.nonzero(edges)
            middle = len(ys) // 2
            points["boundary"] = (int(ys[middle]), int(xs[middle]))
    if not binary.all():
        outside = cv2.distanceTransform(1 - binary, cv2.DIST_L2, 3)
        points["background"] = tuple(int(v) for v in np.unravel_index(np.argmax(outside), outside.shape))
    return points


def attention_query_panel(
    image: np.ndarray, attention: torch.Tensor, grid: tuple[int, int], mask: torch.Tensor
) -> np.ndarray:
    """Per-head CMGM attention of a few query points, overlaid on the image.

    ``attention``: heads×N×N softmax attention of one image (N = h·w). One row per query point
    (object, boundary, background; the query marked by a white dot), one column per head.
    """
    height, width = grid
    mask_on_grid = F.interpolate(mask.float().view(1, 1, *mask.shape[-2:]), size=grid, mode="bilinear")[0, 0]
    scale_y, scale_x = image.shape[0] / height, image.shape[1] / width
    rows = []
    for y, x in query_points(mask_on_grid.cpu().numpy()).values():
        row = []
        for head in attention.float().cpu():
            heat = head[y * width + x].view(height, width).numpy()
            picture = heat_overlay(image, heat)
            center = (int((x + 0.5) * scale_x), int((y + 0.5) * scale_y))
            cv2.circle(picture, center, max(2, image.shape[0] // 64), (255, 255, 255), -1)
            row.append(picture)
        rows.append(row)
    return tile(rows)


def affinity_panel(attention_logits: torch.Tensor, grid: tuple[int, int], mask: torch.Tensor) -> np.ndarray:
    """The predicted N×N attention (sigmoid of the logits) beside its attention-guided-loss target."""
    flat = F.interpolate(mask.float().view(1, 1, *mask.shape[-2:]), size=grid, mode="bilinear").flatten()
    target = torch.outer(flat, flat)
    predicted = torch.sigmoid(attention_logits.float().squeeze())
    return tile([[gray_to_rgb(predicted), gray_to_rgb(target)]])


@contextmanager
def capture_cmgm_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the per-head softmax attention (B×heads×N×N, detached) of every CMGM of ``model``
    during the forward passes run inside the ``with`` block, in grafting-point order."""
    captured: list[torch.Tensor] = []
    handles = [
        module.softmax.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
        for module in model.modules()
        if isinstance(module, CMGM)
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
