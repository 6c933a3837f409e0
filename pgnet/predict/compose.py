"""Output pictures from a picture and its saliency mask: masks, cut-outs, overlays, new backgrounds.

Every function takes and returns numpy arrays (H×W×3 uint8 RGB pictures, H×W float masks in [0, 1]);
``compose`` also takes PIL images (and then returns one) and colours written as text. Modes (``OUTPUT_MODES``):

- ``mask``: the 8-bit mask;
- ``rgba``: a cut-out, the picture with the mask as alpha;
- ``overlay``: the picture tinted where salient;
- ``color``: the subject on a plain colour;
- ``blur``: the subject on its own background blurred (a Gaussian of ``blur`` pixels' sigma);
- ``background``: the subject on another picture, resized to cover the frame and centred.

A picture with its own alpha channel (an RGBA array or PIL image) keeps it: the output alpha is the
product of the input's alpha and the mask (Porter–Duff "in": transparent input pixels stay
transparent, opaque ones take the mask exactly), in ``rgba`` and in the background modes alike.
``refine_foreground`` replaces the picture's colours at soft edges by the estimated subject colour
(``pgnet.predict.foreground.estimate_foreground``) so the old background does not show as a halo.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pgnet.data.io import read_image, split_alpha
from pgnet.errors import UnknownNameError, UserError
from pgnet.predict.foreground import estimate_foreground

OUTPUT_MODES = ("mask", "rgba", "overlay", "color", "blur", "background")
DEFAULT_COLORS = {"overlay": (255, 0, 0), "color": (255, 255, 255)}  # overlay tint; plain background
OVERLAY_OPACITY = 0.5
DEFAULT_BLUR = 20.0  # Gaussian sigma of the ``blur`` background, in output pixels
_SMALL_SIGMA = 4.0  # larger blurs run on a reduced copy (same result to the eye, a fraction of the cost)

PictureInput = np.ndarray | Any  # a numpy array or a PIL image (Pillow is optional)
ColorInput = str | Sequence[int]


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """A float mask in [0, 1] as uint8 0..255 (rounded); a uint8 mask is returned as it is."""
    if mask.dtype == np.uint8:
        return mask
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)


def parse_color(text: str) -> tuple[int, int, int]:
    """An RGB colour from "R,G,B" (0-255) or "#RRGGBB"; the error names the text."""
    value = text.strip()
    try:
        if value.startswith("#") and len(value) == 7:
            rgb = tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(part) for part in value.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UserError(f"invalid colour {text!r}: expected R,G,B with values 0-255 or #RRGGBB")
    return rgb  # type: ignore[return-value]


def as_color(color: ColorInput) -> tuple[int, int, int]:
    """An (R, G, B) tuple from text ("#RRGGBB", "R,G,B") or a sequence of three 0-255 integers."""
    if isinstance(color, str):
        return parse_color(color)
    rgb = tuple(int(c) for c in color)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UserError(f"invalid colour {color!r}: expected three values 0-255")
    return rgb  # type: ignore[return-value]


def resize_to_cover(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``picture`` scaled to cover (H, W) ``size`` (aspect ratio kept) and cropped to it, centred."""
    height, width = size
    scale = max(height / picture.shape[0], width / picture.shape[1])
    scaled = (max(width, round(picture.shape[1] * scale)), max(height, round(picture.shape[0] * scale)))
    shrinking = scale < 1
    resized = cv2.resize(picture, scaled, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def gaussian_blur(picture: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` pixels; above a few pixels it runs on a reduced copy (float32 out).

    With the reflected border the picture repeats every two sides, so a sigma of two longest sides or
    more leaves its mean colour (the first harmonic is scaled by exp(-2π²) ≈ 3e-9): that is returned.
    """
    picture = picture.astype(np.float32)
    height, width = picture.shape[:2]
    if sigma >= 2 * max(height, width):
        return np.broadcast_to(picture.mean(axis=(0, 1), dtype=np.float64).astype(np.float32), picture.shape).copy()
    factor = sigma / _SMALL_SIGMA
    if factor <= 1.5 or min(height, width) / factor < 8:
        return cv2.GaussianBlur(picture, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    reduced = cv2.resize(picture, small, interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(reduced, (0, 0), _SMALL_SIGMA, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR)


def blurred_background(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """The picture's background blurred, the subject left out: blur(I·(1 − α)) / blur(1 − α).

    ``weight`` is the H×W×1 float alpha. Where the subject covers the whole blur window the plain
    blur of the picture is used. Returns H×W×3 float32 on the 0-255 scale.
    """
    behind = 1.0 - weight
    numerator = gaussian_blur(image * behind, sigma)
    denominator = gaussian_blur(behind, sigma).reshape(weight.shape)
    plain = gaussian_blur(image, sigma)
    covered = denominator < 1e-3
    return np.where(covered, plain, numerator / np.maximum(denominator, 1e-3))


@dataclass
class Composer:
    """Makes the output picture of one mode; the options of ``compose``, kept for many pictures.

    A background picture is converted once and its resized copy is kept for the last output size
    (a video's frames all reuse it).
    """

    mode: str = "mask"
    color: ColorInput | None = None
    background: PictureInput | str | os.PathLike | None = None
    blur: float = DEFAULT_BLUR
    refine_foreground: bool = False
    _covered: tuple[tuple[int, int], np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_MODES:
            raise UnknownNameError(f"unknown output mode {self.mode!r}; choose from {', '.join(OUTPUT_MODES)}")
        self.color = as_color(self.color if self.color is not None else DEFAULT_COLORS.get(self.mode, (0, 0, 0)))
        if not 0 < float(self.blur) < math.inf:
            raise UserError(f"blur must be a positive, finite sigma in pixels, got {self.blur}")
        if self.mode == "background":
            if self.background is None:
                raise UserError("background mode needs a background picture")
            if isinstance(self.background, (str, os.PathLike)):
                self.background = read_image(self.background)
            self.background = split_alpha(self.background)[0]

    def background_for(self, size: tuple[int, int]) -> np.ndarray:
        """The background picture covering (H, W) ``size`` (H×W×3 uint8), cached for the last size."""
        covered = self._covered  # read once: writer threads may share this composer
        if covered is None or covered[0] != size:
            covered = (size, resize_to_cover(self.background, size))
            self._covered = covered
        return covered[1]

    def __call__(self, image: PictureInput | None, mask: np.ndarray) -> np.ndarray:
        """The output picture for ``image`` (None in mask mode) and its H×W ``mask``."""
        mask8 = mask_to_uint8(mask)
        if self.mode == "mask":
            return mask8
        if image is None:
            raise ValueError(f"{self.mode} output needs the picture")
        rgb, alpha = split_alpha(image)
        if rgb.shape[:2] != mask8.shape:
            raise ValueError(f"{self.mode} output needs the picture at the mask's size {mask8.shape}, got {rgb.shape}")
        if self.mode == "overlay":
            weight = (mask8.astype(np.float32) * (OVERLAY_OPACITY / 255.0))[:, :, None]  # H×W×1
            tint = np.asarray(self.color, dtype=np.float32).reshape(1, 1, 3)
            return _to_uint8(rgb * (1.0 - weight) + tint * weight)
        if alpha is not None:  # Porter–Duff "in": the subject's coverage times the pixel's own opacity
            mask8 = np.rint(mask8.astype(np.float32) * alpha.astype(np.float32) / 255.0).astype(np.uint8)
        foreground = estimate_foreground(rgb, mask8) if self.refine_foreground else rgb
        if self.mode == "rgba":
            return np.dstack((foreground, mask8))
        weight = (mask8.astype(np.float32) / 255.0)[:, :, None]  # H×W×1
        if self.mode == "color":
            behind = np.asarray(self.color, dtype=np.float32).reshape(1, 1, 3)
        elif self.mode == "blur":
            behind = blurred_background(rgb, weight, float(self.blur))
        else:
            behind = self.background_for(mask8.shape)
        return _to_uint8(foreground * weight + behind * (1.0 - weight))


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def compose(
    image: PictureInput | None,
    mask: np.ndarray,
    mode: str = "mask",
    color: ColorInput | None = None,
    *,
    background: PictureInput | str | os.PathLike | None = None,
    blur: float = DEFAULT_BLUR,
    refine_foreground: bool = False,
) -> np.ndarray | Any:
    """The output picture of one mode (see the module docstring) from a picture and its H×W mask.

    ``image`` is an H×W×3 (RGB) or H×W×4 (RGBA) uint8 array or a PIL image (None in mask mode);
    ``mask`` is float in [0, 1] (or uint8). ``color`` is "#RRGGBB", "R,G,B" or a tuple: the
    ``color`` background (white) or the ``overlay`` tint (red). ``background`` is a picture (array,
    PIL image or path) for the ``background`` mode; ``blur`` the sigma in pixels of ``blur``.
    Returns H×W uint8 (mask), H×W×4 (rgba) or H×W×3 uint8 RGB; a PIL image when ``image`` is one
    (mode L, RGBA or RGB). Blending uses the 8-bit mask, so an opaque picture's cut-out has exactly the
    mask PNG as alpha.
    """
    options = Composer(mode, color, background=background, blur=blur, refine_foreground=refine_foreground)
    output = options(image, mask)
    if type(image).__module__.startswith("PIL."):  # PIL in, PIL out (Pillow is there: it made the input)
        from PIL import Image

        return Image.fromarray(output)
    return output
