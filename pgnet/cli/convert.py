"""``pgnet-convert`` / ``scripts/convert_official.py``: convert a released official checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/convert_official.py SRC DST``."""
    parser = argparse.ArgumentParser(
        description="Convert a released official PGNet checkpoint to a pgnet checkpoint."
    )
    parser.add_argument("source", help="official checkpoint (state dict saved from DDP, keys 'module.*')")
    parser.add_argument("destination", help="pgnet checkpoint to write")
    args = parser.parse_args(argv)

    from pgnet.checkpoint import convert_official_checkpoint
    from pgnet.models.official import ConversionError

    try:
        unused = convert_official_checkpoint(args.source, args.destination)
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.destination}")
    print(f"{len(unused)} source keys unused (never-run swin.norm and Swin buffers timm recomputes):")
    for key in unused:
        print(f"  {key}")
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.convert
    sys.exit(main())
