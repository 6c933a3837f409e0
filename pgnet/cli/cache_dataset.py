"""``pgnet-cache-dataset`` / ``datasets/cache.py``: write resized copies of a dataset's images and
masks, which training then reads instead of the originals.

Copies go to ROOT/.pgnet_cache/long<SIDE>/; files whose long side is already at most SIDE are left out
(read from the source). A dataset under ROOT whose transform resizes to at most SIDE (1024 for the
default recipe) then reads the copies; a copy whose source changed since is ignored until the next
run, which only redoes changed or new files. Delete the folder to drop the cache. The cache is
``pgnet.data.cache``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-cache-dataset"
EXIT_STATUSES = (
    "exit status: 0 every pair cached or read as it is; 1 some pairs failed (listed) or the disk filled up; "
    "2 nothing done (missing root, unknown name, no dataset found, a copy that would land on a source, a bad option)"
)


def build_parser() -> argparse.ArgumentParser:
    """``ROOT --long-side SIDE [--name NAME ...] [--jobs N]``."""
    parser = build_command_parser(
        PROG, "Write resized copies of a dataset's images and masks, used transparently by training.",
        "Example: python datasets/cache.py data/UHRSD --long-side 1280", EXIT_STATUSES,
    )
    parser.add_argument("root", type=Path, help="dataset root folder; the cache is written inside it")
    parser.add_argument("--long-side", type=int, default=1280, help="long side of the cached copies")
    parser.add_argument("--name", action="append", help="registered dataset name (repeatable; default: all found)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and cache the datasets; the exit statuses are in ``--help``."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _cache(args))


def _cache(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast.
    from pgnet.data.cache import build_cache, cache_dir_for
    from pgnet.data.registry import dataset_pairs, find_datasets

    specs = find_datasets(args.root, args.name)
    pairs = dataset_pairs(specs)
    print(f"caching {len(pairs)} pairs of {', '.join(spec.name for spec in specs)} at long side {args.long_side}")
    report = build_cache(args.root, pairs, args.long_side, jobs=args.jobs)
    print(report.describe(cache_dir_for(args.root, args.long_side)))
    return 1 if report.failed else 0


if __name__ == "__main__":  # python -m pgnet.cli.cache_dataset
    sys.exit(main())
