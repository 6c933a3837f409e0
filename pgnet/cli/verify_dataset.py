"""``pgnet-verify-dataset`` / ``datasets/verify.py``: check a dataset on disk (pair count against the
release, unpaired files, size mismatches, unreadable files) and print a report per dataset.

Without ``--name``, every registered layout found under ROOT is checked. Sizes are compared at full
size (the image's from its file header, whatever size it is decoded at). Errors: unreadable, unpaired
and mismatched files. Warnings: a pair count other than the release's (a partial copy; an error with
``--strict-counts``), pictures over the pixel limit (training and evaluation skip them), soft masks,
duplicate stems. The checks are ``pgnet.data.verify``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-verify-dataset"
EXIT_STATUSES = (
    "exit status: 0 no error found; 1 errors found; 2 nothing could be checked (missing root, unknown name, "
    "no dataset found, a bad option)"
)


def build_parser() -> argparse.ArgumentParser:
    """``ROOT [--name NAME] [--jobs N] [--strict-counts] [--max-pixels N]``."""
    parser = build_command_parser(
        PROG, "Check a dataset on disk: pair count against the release, unpaired files, size mismatches, "
        "unreadable files.", "Example: python datasets/verify.py data/DUTS", EXIT_STATUSES,
    )
    parser.add_argument("root", type=Path, help="dataset root folder")
    parser.add_argument("--name", help="registered dataset name (default: every layout found under ROOT)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--max-listed", type=int, default=10, help="files listed per problem kind")
    parser.add_argument("--strict-counts", action="store_true",
                        help="a pair count other than the release's is an error (default: a warning)")
    parser.add_argument("--max-pixels", type=float, metavar="N",
                        help="pixel limit of decoding (default 100e6, as training; 0: no limit)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, check the datasets and print their reports; the exit statuses are in ``--help``."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _verify(args))


def _verify(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast.
    from pgnet.data.io import set_max_pixels
    from pgnet.data.registry import find_datasets
    from pgnet.data.verify import check_dataset, format_report, format_summary

    if args.max_pixels is not None:
        set_max_pixels(int(args.max_pixels))
    specs = find_datasets(args.root, [args.name] if args.name else None)
    reports = [check_dataset(spec, jobs=args.jobs, strict_counts=args.strict_counts) for spec in specs]
    for report in reports:
        print(format_report(report, args.max_listed))
    print(format_summary(reports))
    return 1 if any(report.errors for report in reports) else 0


if __name__ == "__main__":  # python -m pgnet.cli.verify_dataset
    sys.exit(main())
