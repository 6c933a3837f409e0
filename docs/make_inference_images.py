"""Make the pictures of docs/inference.md: every output mode of ``pgnet.predict.compose`` on one scene.

    python docs/make_inference_images.py [--seed 3] [--out docs/images]

The scene is synthetic (``pgnet.data.synthetic.make_soft_composite``): a subject with a wide soft
edge over clutter, whose true alpha stands in for a trained model's mask (no trained weights ship
with the project), so the pictures show what each mode does with a mask, not a model's quality. The ``background``
picture is another synthetic scene (``make_sample``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from pgnet.data.synthetic import make_sample, make_soft_composite
from pgnet.predict.compose import compose
from pgnet.writing import write_image

SIZE = (216, 288)  # (H, W): small pictures for the docs
ZOOM = 4  # the edge close-ups are enlarged this much


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    """The usual light-grey checkerboard that shows transparency, H×W×3 uint8."""
    ys, xs = np.mgrid[0:height, 0:width]
    board = np.where(((ys // cell) + (xs // cell)) % 2 == 0, 205, 245).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


def on_checkerboard(rgba: np.ndarray) -> np.ndarray:
    """An RGBA cut-out flattened onto a checkerboard (what an image viewer shows)."""
    weight = rgba[..., 3:].astype(np.float32) / 255.0
    board = checkerboard(*rgba.shape[:2]).astype(np.float32)
    return np.rint(rgba[..., :3] * weight + board * (1 - weight)).astype(np.uint8)


def edge_close_up(rgba: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The cut-out around the rightmost soft edge, enlarged ``ZOOM`` times, on a black backdrop."""
    row = alpha.shape[0] // 2
    columns = np.nonzero(alpha[row] > 0.02)[0]
    right = int(columns.max()) if columns.size else alpha.shape[1] // 2
    half = SIZE[0] // (2 * ZOOM)
    top, left = max(0, row - half), max(0, min(alpha.shape[1] - 2 * half, right - half))
    crop = rgba[top : top + 2 * half, left : left + 2 * half]
    on_black = np.rint(crop[..., :3] * (crop[..., 3:] / 255.0)).astype(np.uint8)
    return cv2.resize(on_black, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "images"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    photo, alpha, _, _ = make_soft_composite(args.seed, SIZE)
    backdrop, _ = make_sample(args.seed + 100, (300, 500))  # another aspect ratio: resized to cover
    rgba = compose(photo, alpha, "rgba")
    refined = compose(photo, alpha, "rgba", refine_foreground=True)
    pictures = {
        "input": photo,
        "mask": compose(None, alpha, "mask"),
        "rgba": on_checkerboard(rgba),
        "overlay": compose(photo, alpha, "overlay"),
        "color": compose(photo, alpha, "color", "#00b140"),
        "blur": compose(photo, alpha, "blur", blur=8),
        "background": compose(photo, alpha, "background", background=backdrop, refine_foreground=True),
        "edge_raw": edge_close_up(rgba, alpha),
        "edge_refined": edge_close_up(refined, alpha),
    }
    for name, picture in pictures.items():
        path = write_image(out / f"{name}.png", picture)
        print(f"{path} {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
