"""``pgnet-convert`` / ``scripts/convert_official.py``: convert a released official checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-convert"


def build_parser() -> argparse.ArgumentParser:
    """``SRC DST``."""
    parser = build_command_parser(
        PROG, "Convert a released official PGNet checkpoint to a pgnet checkpoint.",
        "Example: scripts/convert_official.py PGNet_DUT+HR.pth pgnet_dh.pth",
    )
    parser.add_argument("source", help="official checkpoint (state dict saved from DDP, keys 'module.*')")
    parser.add_argument("destination", help="pgnet checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and convert; the exit statuses are in ``--help`` (a bad source is a usage error, 2)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet.checkpoint import convert_official_checkpoint
    from pgnet.writing import check_new_file

    check_new_file(args.destination, [args.source], overwrite=args.overwrite, what="checkpoint")
    unused = convert_official_checkpoint(args.source, args.destination)
    print(f"wrote {args.destination}")
    print(f"{len(unused)} source keys unused (never-run swin.norm and Swin buffers timm recomputes):")
    for key in unused:
        print(f"  {key}")
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.convert
    sys.exit(main())
