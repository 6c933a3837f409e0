"""Labelled pictures of what the network does: predictions, CMGM attention of query tokens, the AGL.

Every picture is an H×W×3 uint8 RGB array (TensorBoard's ``dataformats="HWC"``, or ``cv2.imwrite``
after RGB→BGR), at most ``MAX_WIDTH`` pixels wide. Tiles are composed in numpy at their exact pixel
size (no resampling moiré); only the text is drawn by matplotlib, with its object API on an Agg
canvas (no pyplot, no global state).

- :func:`prediction_picture`: input, ground truth, prediction and both side outputs.
- :func:`attention_query_picture`: where one query token looks, per CMGM head (softmax rows).
- :func:`agl_picture`: the attention-guided loss: the attention head's sigmoid beside its target.
- :func:`window_of_query`: the window of a windowed grafting point around a query, for both pictures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from pgnet.models.cmgm import CMGM

MAX_WIDTH = 1100  # pixels; a picture fits a 1920-px screen beside TensorBoard's side bar
TILE = 180  # pixels of one map in the attention pictures
ATTENTION_COLORMAP = "inferno"
AGL_COLORMAP = "viridis"
_DPI = 100
_GAP, _TITLE, _HEADER = 10, 20, 30  # pixels: between tiles, above each tile, above the picture


def mask_on_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A mask (H×W or 1×H×W, values in [0, 1]) resized bilinearly to the graft grid (h×w)."""
    return F.interpolate(mask.detach().float().cpu().reshape(1, 1, *mask.shape[-2:]), size=grid, mode="bilinear",
                         align_corners=False)[0, 0]


def query_points(mask_grid: np.ndarray) -> dict[str, tuple[int, int]]:
    """Query positions (row, column) on the graft grid: deepest inside the object, on its boundary,
    and deepest in the background away from the border. A region the mask lacks is left out."""
    binary = (np.asarray(mask_grid) > 0.5).astype(np.uint8)
    points: dict[str, tuple[int, int]] = {}
    if binary.any():
        # Padded with background: the border counts as background for the object's depth.
        inside = cv2.distanceTransform(np.pad(binary, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        points["object"] = tuple(int(v) for v in np.unravel_index(np.argmax(inside), inside.shape))
        edges = binary - cv2.erode(binary, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        if edges.any():
            ys, xs = np.nonzero(edges)
            points["boundary"] = (int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))
    if not binary.all():
        # Padded with object: the border counts as object, so the query sits away from both.
        outside = cv2.distanceTransform(np.pad(1 - binary, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        points["background"] = tuple(int(v) for v in np.unravel_index(np.argmax(outside), outside.shape))
    return points


def object_first_order(flat_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The tokens sorted by mask value, object first (ties keep raster order), and how many are
    object (mask > 0.5). Sorted this way, the AGL target mask(q)·mask(k) is a block matrix."""
    return torch.argsort(flat_mask, descending=True, stable=True), int((flat_mask > 0.5).sum())


# --------------------------------------------------------------------------------------------------
# Drawing


class _Sheet:
    """A white canvas: tiles pasted in numpy at exact pixel positions, text drawn on top by matplotlib."""

    def __init__(self, width: int, height: int):
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)
        self.texts: list[tuple[float, float, str, dict[str, Any]]] = []

    def paste(self, tile: np.ndarray, left: int, top: int, title: str = "") -> None:
        """Paste an S×S×3 tile (uint8, or float in [0, 1]) with a thin gray frame and a title above."""
        if tile.dtype != np.uint8:
            tile = (np.clip(tile, 0, 1) * 255).round().astype(np.uint8)
        height, width = tile.shape[:2]
        self.pixels[top - 1 : top + height + 1, left - 1 : left + width + 1] = 160
        self.pixels[top : top + height, left : left + width] = tile
        if title:
            self.text(left + width / 2, top - 4, title, ha="center", va="bottom")

    def text(self, x: float, y: float, text: str, size: float = 9, **options: Any) -> None:
        """Text at pixel (x, y) from the top-left corner; ``options`` as matplotlib's ``Figure.text``."""
        self.texts.append((x, y, text, {"fontsize": size, **options}))

    def colour_bar(self, left: int, top: int, height: int, colormap: str, vmax: float, label: str) -> None:
        """A vertical colour bar from 0 (bottom) to ``vmax`` (top) with five ticks and a label."""
        ramp = colormaps[colormap](np.linspace(1, 0, height))[:, None, :3]
        self.paste(np.repeat(ramp, 14, axis=1), left, top)
        for fraction in np.linspace(0, 1, 5):
            y = top + (1 - fraction) * (height - 1)
            self.pixels[round(y), left + 14 : left + 18] = 0
            self.text(left + 20, y, f"{fraction * vmax:.2g}", size=8, va="center")
        self.text(left + 64, top + height / 2, label, size=8, va="center", rotation=90)

    def render(self) -> np.ndarray:
        height, width = self.pixels.shape[:2]
        figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
        figure.patch.set_alpha(0)
        for x, y, text, options in self.texts:
            figure.text(x / width, 1 - y / height, text, **options)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        layer = np.asarray(canvas.buffer_rgba())
        picture = self.pixels.copy()
        drawn = layer[..., 3] > 0  # blend only where text was drawn
        alpha = layer[drawn, 3:].astype(np.float32) / 255
        picture[drawn] = (picture[drawn] * (1 - alpha) + layer[drawn, :3] * alpha).round().astype(np.uint8)
        return picture


def _resize(values: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """To size×size: area averaging when shrinking (no moiré), bilinear (or nearest) when growing."""
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if max(values.shape[:2]) > size else cv2.INTER_LINEAR
    values = values if values.dtype == np.uint8 else values.astype(np.float32)
    return cv2.resize(values, (size, size), interpolation=interpolation)


def _to_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A 2-D float32 array from an H×W or 1×H×W tensor or array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.squeeze(np.asarray(values, dtype=np.float32))


def _gray(values: np.ndarray, size: int) -> np.ndarray:
    return np.repeat(np.clip(_resize(values, size), 0, 1)[..., None], 3, axis=2)


def _coloured(values: np.ndarray, size: int, colormap: str, vmax: float, nearest: bool = False) -> np.ndarray:
    return colormaps[colormap](np.clip(_resize(values, size, nearest) / vmax, 0, 1))[..., :3]


def _overlay(image: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """``heat`` (any size) coloured on a dimmed gray ``image`` (S×S×3 uint8) with opacity √(heat / vmax):
    the image shows where attention is low."""
    heat = np.clip(_resize(heat, image.shape[0]) / max(vmax, 1e-12), 0, 1)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None] / 255 * 0.7 + 0.15
    opacity = np.sqrt(heat)[..., None]
    return gray * (1 - opacity) + colormaps[ATTENTION_COLORMAP](heat)[..., :3] * opacity


def _ring(tile: np.ndarray, point: tuple[int, int], grid: tuple[int, int], thin: bool = False) -> np.ndarray:
    """The tile (S×S×3) with the grid cell ``point`` (row, column) marked by a white ring with a dark outline."""
    tile = (np.clip(tile, 0, 1) * 255).round().astype(np.uint8) if tile.dtype != np.uint8 else tile.copy()
    size = tile.shape[0]
    center = (int((point[1] + 0.5) * size / grid[1]), int((point[0] + 0.5) * size / grid[0]))
    radius = max(6, int(0.6 * size / min(grid)))
    cv2.circle(tile, center, radius, (0, 0, 0), 3 if thin else 5, cv2.LINE_AA)
    cv2.circle(tile, center, radius, (255, 255, 255), 1 if thin else 2, cv2.LINE_AA)
    return tile


def _square(image: np.ndarray, size: int) -> np.ndarray:
    return image if image.shape[:2] == (size, size) else _resize(image, size)


# --------------------------------------------------------------------------------------------------
# Pictures


def prediction_picture(image: np.ndarray, mask: torch.Tensor, pred: torch.Tensor, side_cnn: torch.Tensor,
                       side_swin: torch.Tensor, title: str = "") -> np.ndarray:
    """Input | ground truth | prediction | CNN side output | Swin side output, titled; the outputs are
    logits (1×h×w or h×w) shown through the sigmoid on one 0–1 gray scale."""
    tiles = [(_square(image, TILE), "input"), (_gray(_to_numpy(mask), TILE), "ground truth")]
    for logits, name in ((pred, "prediction"), (side_cnn, "CNN side (graft grid)"),
                         (side_swin, "Swin side (graft grid)")):
        tiles.append((_gray(_to_numpy(torch.sigmoid(logits.float())), TILE), name))
    sheet = _Sheet(_GAP + len(tiles) * (TILE + _GAP), _HEADER + _TITLE + TILE + _GAP)
    sheet.text(_GAP, 8, title, size=10, va="top")
    for index, (tile, name) in enumerate(tiles):
        sheet.paste(tile, _GAP + index * (TILE + _GAP), _HEADER + _TITLE, name)
    return sheet.render()


def attention_query_picture(image: np.ndarray, mask: torch.Tensor, attention: torch.Tensor, grid: tuple[int, int],
                            point: tuple[int, int], title: str) -> np.ndarray:
    """Where one query token looks: the image and ground truth with the query ringed, the mean over
    heads, then every head; one colour scale (0 to the largest weight shown), opacity following it.

    ``attention``: heads×N×N softmax attention of one image (N = h·w of ``grid``); ``point``: the
    query's (row, column) on the grid.
    """
    height, width = grid
    heads, tokens = attention.shape[0], height * width
    rows = attention[:, point[0] * width + point[1]].float().cpu().reshape(heads, height, width).numpy()
    mean = rows.mean(0)
    vmax = max(float(rows.max()), 1e-12)
    columns = min(5, max(4, -(-heads // 2)))  # 4 for up to 8 heads
    size = min(TILE, (MAX_WIDTH - 100) // columns - _GAP)
    cell = size + _GAP
    lines = 1 + -(-heads // columns)
    sheet = _Sheet(_GAP + columns * cell + 100, _HEADER + lines * (cell + _TITLE))
    sheet.text(_GAP, 8, f"{title}   (uniform attention would be 1/{tokens} = {1 / tokens:.2g} everywhere)",
               size=10, va="top")
    picture = _square(image, size)

    def place(tile: np.ndarray, column: int, line: int, name: str) -> None:
        sheet.paste(tile, _GAP + column * cell, _HEADER + line * (cell + _TITLE) + _TITLE, name)

    place(_ring(picture, point, grid), 0, 0, "image, query ringed")
    place(_ring(_gray(_to_numpy(mask), size), point, grid), 1, 0, "ground truth")
    place(_ring(_overlay(picture, mean, vmax), point, grid), 2, 0, f"mean of {heads} heads, peak {mean.max():.3g}")
    if columns > 3:
        left = _GAP + 3 * cell
        sheet.text(left + 4, _HEADER + _TITLE + 10, f"Each tile: this query token's\nsoftmax weights over the\n"
                   f"{height}×{width} key tokens (one head).\nColour and opacity grow\nwith the weight, on one\n"
                   "scale for the whole picture.", size=8, va="top", linespacing=1.6)
    for head in range(heads):
        tile = _ring(_overlay(picture, rows[head], vmax), point, grid, thin=True)
        place(tile, head % columns, 1 + head // columns, f"head {head + 1}, peak {rows[head].max():.3g}")
    sheet.colour_bar(_GAP + columns * cell + 4, _HEADER + _TITLE, lines * (cell + _TITLE) - _TITLE - _GAP,
                     ATTENTION_COLORMAP, vmax, "softmax weight of the key token")
    return sheet.render()


def agl_picture(image: np.ndarray, mask: torch.Tensor, attention_logits: torch.Tensor, grid: tuple[int, int],
                points: dict[str, tuple[int, int]], title: str) -> np.ndarray:
    """The attention-guided loss: per query, its predicted row σ(logits) and target row
    mask(q)·mask(k) on the graft grid and their absolute difference; below, the whole N×N matrices
    with the tokens sorted by mask value (object first), where the target is a block matrix.

    ``attention_logits``: the attention head's N×N (or 1×N×N) logits of one image.
    """
    height, width = grid
    tokens = height * width
    flat_mask = mask_on_grid(mask, grid).flatten()  # N
    predicted = torch.sigmoid(attention_logits.detach().float().cpu().reshape(tokens, tokens))
    target = torch.outer(flat_mask, flat_mask)
    small, big, axis = 150, 330, 30  # tiles of the rows, the matrices, room for axis labels
    line_height = small + _GAP + _TITLE
    matrices_top = _HEADER + len(points) * line_height + _TITLE
    sheet = _Sheet(max(_GAP + 4 * (small + _GAP), 2 * (axis + big + _GAP)) + 100, matrices_top + big + 40)
    sheet.text(_GAP, 8, title, size=10, va="top")
    picture = _square(image, small)
    names = ("predicted row σ(logits)", "target row", "|predicted − target|")
    for line, (query, point) in enumerate(points.items()):
        index = point[0] * width + point[1]
        top = _HEADER + line * line_height + _TITLE
        maps = [predicted[index].reshape(grid).numpy(), target[index].reshape(grid).numpy()]
        maps.append(np.abs(maps[0] - maps[1]))
        sheet.paste(_ring(picture, point, grid), _GAP, top, f"{query} query")
        for column, (values, name) in enumerate(zip(maps, names), start=1):
            tile = _ring(_coloured(values, small, AGL_COLORMAP, 1.0, nearest=True), point, grid, thin=True)
            sheet.paste(tile, _GAP + column * (small + _GAP), top, name)
    order, objects = object_first_order(flat_mask)
    split = round(objects * big / tokens)
    for column, (matrix, name) in enumerate(((predicted, "predicted σ(logits)"), (target, "target (a block matrix)"))):
        left = axis + column * (axis + big + _GAP)
        # Nearest when enlarging keeps the block edges sharp; area averaging when shrinking avoids moiré.
        tile = _coloured(matrix[order][:, order].numpy(), big, AGL_COLORMAP, 1.0, nearest=tokens <= big)
        if 0 < objects < tokens:  # dashed white lines between the object and background tokens
            tile[split, ::6], tile[::6, split] = 1.0, 1.0
        sheet.paste(tile, left, matrices_top, f"{name}, {tokens}×{tokens}")
        for start, stop, region in ((0, split, "object"), (split, big, "background")):
            if stop - start > 40:
                sheet.text(left + (start + stop) / 2, matrices_top + big + 4, f"{region} keys", size=8, ha="center",
                           va="top")
                sheet.text(left - 4, matrices_top + (start + stop) / 2, f"{region} queries", size=8, ha="right",
                           va="center", rotation=90)
    sheet.text(_GAP, matrices_top + big + 22, f"N×N matrices: tokens sorted by mask value, the {objects} object tokens "
               f"first, then the {tokens - objects} background tokens (dotted lines).", size=8, va="top")
    sheet.colour_bar(sheet.pixels.shape[1] - 90, _HEADER + _TITLE, matrices_top + big - _HEADER - _TITLE,
                     AGL_COLORMAP, 1.0, "σ(logit), target and error (one scale)")
    return sheet.render()


def query_pictures(image: np.ndarray, mask: torch.Tensor, attention: torch.Tensor, grid: tuple[int, int],
                   title: str) -> dict[str, np.ndarray]:
    """:func:`attention_query_picture` for each query point of ``mask`` on ``grid``, by query name."""
    points = query_points(mask_on_grid(mask, grid).numpy())
    return {query: attention_query_picture(image, mask, attention, grid, point, f"{title}, {query} query")
            for query, point in points.items()}


def window_of_query(image: np.ndarray, mask: torch.Tensor, grid: tuple[int, int], layout: tuple[int, int],
                    point: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor, int, tuple[int, int], tuple[int, int]]:
    """The window of a windowed grafting point that holds the query ``point`` of ``grid``.

    ``layout`` is the point's (window size, offset) (``pgnet.models.window_cmgm.WindowLayout``).
    Returns the image and mask cropped to that window (zero where it overhangs the feature, as its
    padding does), the window's index among the image's windows (row-major), the query's position
    inside the window, and the window's top-left corner on ``grid`` (negative when shifted).
    """
    size, offset = int(layout[0]), int(layout[1])
    height, width = grid
    columns = (width + offset + size - 1) // size
    row, column = point[0] + offset, point[1] + offset
    index = (row // size) * columns + column // size
    top, left = (row // size) * size - offset, (column // size) * size - offset
    scale_y, scale_x = image.shape[0] / height, image.shape[1] / width
    flat_mask = mask.detach().float().cpu().reshape(mask.shape[-2:]).numpy()
    crops = []
    for values, sy, sx in ((image, scale_y, scale_x), (flat_mask, flat_mask.shape[0] / height,
                                                      flat_mask.shape[1] / width)):
        pad = int(np.ceil(size * max(sy, sx)))
        padded = np.pad(values, [(pad, pad), (pad, pad)] + [(0, 0)] * (values.ndim - 2))
        y0, x0 = round(top * sy) + pad, round(left * sx) + pad
        crops.append(padded[y0 : y0 + max(1, round(size * sy)), x0 : x0 + max(1, round(size * sx))])
    return crops[0], torch.from_numpy(np.ascontiguousarray(crops[1])), index, (row % size, column % size), (top, left)


@contextmanager
def capture_cmgm_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the per-head softmax attention (B×heads×N×N, detached) of every CMGM of ``model``
    during the forward passes run inside the ``with`` block, in the order the CMGMs ran."""
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
