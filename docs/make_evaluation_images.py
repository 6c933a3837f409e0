"""Make the evaluation example of the README: ``pgnet-eval`` on a synthetic comparison of ten methods.

    python docs/make_evaluation_images.py [--out docs/images] [--work /tmp/pgnet-eval-example]

The "methods" are the synthetic masks degraded in ten ways (blurred, noisy, shifted, eroded, dilated,
coarse), scored with a made-up reference row, so the pictures show the report's layout, not any
model's quality. It writes ``eval_pr.png``, ``eval_fm.png`` and ``eval_em.png`` (palette PNGs, well
under 150 KB) and prints the Markdown table (``results.md``) for the README.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from pgnet.cli.eval import main as eval_main
from pgnet.data.synthetic import write_synthetic_dataset
from pgnet.writing import write_bytes, write_image

DATASET = "synthetic"
SIZE = (240, 320)  # (H, W)
COUNT = 24
REFERENCE = """\
references:
  baseline:
    method: Baseline (paper)
    source: illustrative numbers for this example, not a publication
    scores:
      synthetic: {Sm: 0.900, maxFm: 0.900, MAE: 0.040}
"""


def degrade(mask: np.ndarray, kind: str, amount: int, rng: np.random.Generator) -> np.ndarray:
    """The mask as a method of some quality would predict it (uint8)."""
    soft = mask.astype(np.float32)
    if kind == "blur":
        soft = cv2.GaussianBlur(soft, (0, 0), amount)
    elif kind == "noise":
        soft = cv2.GaussianBlur(soft, (0, 0), 1.5) + rng.normal(0, amount, mask.shape)
    elif kind == "shift":
        soft = cv2.GaussianBlur(np.roll(soft, amount, axis=(0, 1)), (0, 0), 1)
    elif kind == "erode":
        square = np.ones((2 * amount + 1, 2 * amount + 1), np.uint8)
        soft = cv2.GaussianBlur(cv2.erode(mask, square).astype(np.float32), (0, 0), 1)
    elif kind == "dilate":
        square = np.ones((2 * amount + 1, 2 * amount + 1), np.uint8)
        soft = cv2.GaussianBlur(cv2.dilate(mask, square).astype(np.float32), (0, 0), 1)
    elif kind == "coarse":
        small = cv2.resize(soft, (mask.shape[1] // amount, mask.shape[0] // amount), interpolation=cv2.INTER_AREA)
        soft = cv2.resize(small, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(soft, 0, 255).round().astype(np.uint8)


METHODS = [("blur", 1), ("blur", 3), ("blur", 6), ("noise", 30), ("noise", 60), ("shift", 2), ("shift", 5),
           ("erode", 3), ("dilate", 3), ("coarse", 8)]


def palette_png(path: Path) -> int:
    """Rewrite a plot as a 256-colour PNG (a fraction of the size, no visible change); returns its size."""
    from PIL import Image

    with Image.open(path) as picture:
        reduced = picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    reduced.save(buffer, format="PNG", optimize=True)
    write_bytes(path, buffer.getvalue())
    return len(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    parser.add_argument("--work", type=Path, help="keep the data, predictions and report here (default: temporary)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="pgnet-eval-example-"))
    try:
        data = write_synthetic_dataset(work / "data", COUNT, SIZE, seed=7)
        rng = np.random.default_rng(0)
        for mask_path in sorted((data / "mask").iterdir()):
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            for kind, amount in METHODS:
                prediction = degrade(mask, kind, amount, rng)
                write_image(work / "preds" / f"{kind}-{amount}" / DATASET / mask_path.name, prediction)
        (work / "reference.yaml").write_text(REFERENCE)
        report = work / "report"
        with contextlib.redirect_stdout(io.StringIO()):  # its terminal tables; results.md is printed below
            status = eval_main(["--pred-root", str(work / "preds"), "--gt", f"{DATASET}={data / 'mask'}",
                                "--metrics", "MAE", "Sm", "Em", "Fm", "mBA", "--reference",
                                str(work / "reference.yaml"), "-o", str(report), "--no-progress", "--device", "cpu"])
        if status:
            return status
        args.out.mkdir(parents=True, exist_ok=True)
        for kind in ("pr", "fm", "em"):
            target = args.out / f"eval_{kind}.png"
            shutil.copyfile(report / "plots" / f"{DATASET}_{kind}.png", target)
            print(f"{target} {palette_png(target) // 1024} KB", file=sys.stderr)
        print((report / "results.md").read_text())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
