"""Write resized copies of a dataset's images and masks, used transparently by training.

    python datasets/cache.py ROOT --long-side 1280 [--name NAME ...] [--jobs N]

Copies go to ROOT/.pgnet_cache/long<SIDE>/; files whose long side is already at most SIDE are left
out (read from the source). A dataset under ROOT whose transform resizes to at most SIDE (1024 for
the default recipe) then reads the copies; a copy whose source changed since is ignored until the
next run, which only redoes changed or new files. Delete the folder to drop the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pgnet.data.cache import build_cache, cache_dir_for
from pgnet.data.registry import detect_datasets, pair_files, resolve_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dataset root folder; the cache is written inside it")
    parser.add_argument("--long-side", type=int, default=1280, help="long side of the cached copies")
    parser.add_argument("--name", action="append", help="registered dataset name (repeatable; default: all found)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    args = parser.parse_args(argv)

    try:
        if args.name:
            specs = [resolve_dataset(name, args.root) for name in args.name]
        elif not args.root.is_dir():
            raise FileNotFoundError(f"dataset root {args.root} does not exist or is not a folder")
        else:
            specs = detect_datasets(args.root)
            if not specs:
                raise FileNotFoundError(f"no known dataset layout under {args.root}; pass --name")
        pairs = [pair for spec in specs for pair in pair_files(spec.image_dir, spec.mask_dir).pairs]
        print(f"caching {len(pairs)} pairs of {', '.join(spec.name for spec in specs)} at long side {args.long_side}")
        report = build_cache(args.root, pairs, args.long_side, jobs=args.jobs)
    except (KeyError, FileNotFoundError, ValueError) as error:  # UserError (an overwrite, a full disk) included
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    print(
        f"{cache_dir_for(args.root, args.long_side)}: {report.written} written, {report.fresh} already cached, "
        f"{report.small} small enough to read as they are, {len(report.failed)} failed"
    )
    for message in report.failed[:20]:
        print(f"  failed: {message}")
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more (run datasets/verify.py)")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
