"""``pgnet-make-synthetic`` / ``datasets/make_synthetic.py``: write a synthetic dataset to disk in the
generic layout (OUT/image/*.jpg + OUT/mask/*.png).

``--size`` is a side length (square) or WIDTHxHEIGHT, e.g. 3840x2160. Sample i is the same as item i
of ``SyntheticDataset(n, size, seed)``; use it in a config as ``{name: generic, root: OUT}``. The
writer is ``pgnet.data.synthetic.write_synthetic_dataset``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-make-synthetic"


def parse_size(text: str) -> tuple[int, int]:
    """``--size``: '1024' -> (1024, 1024); '3840x2160' (width x height) -> (2160, 3840)."""
    try:
        if "x" in text.lower():
            width, height = (int(part) for part in text.lower().split("x"))
            return height, width
        return int(text), int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WIDTHxHEIGHT, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """``OUT --n N --size SIZE [--seed S] [--quality Q] [--jobs N]``."""
    parser = build_command_parser(
        PROG, "Write a synthetic dataset to disk in the generic layout (OUT/image/*.jpg + OUT/mask/*.png).",
        "Example: python datasets/make_synthetic.py data/synthetic --n 200 --size 3840x2160",
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--n", type=int, default=200, help="number of samples")
    parser.add_argument("--size", type=parse_size, default=(1024, 1024), help="N or WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the images")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and write the pairs; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    return run_command(PROG, lambda: _write(args))


def _write(args: argparse.Namespace) -> None:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(args.out, args.n, args.size, seed=args.seed, quality=args.quality, jobs=args.jobs)
    height, width = args.size
    print(f"wrote {args.n} synthetic {width}x{height} pairs to {args.out}/image and {args.out}/mask")


if __name__ == "__main__":  # python -m pgnet.cli.make_synthetic
    sys.exit(main())
