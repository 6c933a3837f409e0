"""Check a dataset on disk: pair count against the release, unpaired files, size mismatches,
unreadable files.

    python datasets/verify.py ROOT [--name NAME] [--jobs N] [--strict-counts] [--max-pixels N]

Without --name, every registered layout found under ROOT is checked. Sizes are compared at full size
(the image's from its file header, whatever size it is decoded at). Errors: unreadable, unpaired and
mismatched files. Warnings: a pair count other than the release's (a partial copy; an error with
--strict-counts), pictures over the pixel limit (training and evaluation skip them), soft masks,
duplicate stems. Exits 0 when there is no error, 1 when errors were found, 2 when nothing could be
checked (missing root, unknown name, no dataset found).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pgnet.data.io import ImageReadError, ImageTooLargeError, PairMismatchError, read_pair, set_max_pixels
from pgnet.data.registry import DatasetSpec, detect_datasets, pair_files, resolve_dataset

# Decode JPEGs at 1/8 scale where possible: the whole file is still parsed, so corruption and
# truncation show, at a fraction of the full decode's cost. Sizes are compared on the full-size
# headers (read_pair), never on the reduced decode.
_CHECK_MAX_SIDE = 64


@dataclass
class DatasetReport:
    """Problems found in one dataset; ``errors`` make the check fail, ``notes`` (warnings) do not."""

    spec: DatasetSpec
    pairs: int = 0
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, message: str, error: bool = True) -> None:
        (self.errors if error else self.notes).setdefault(kind, []).append(message)


def _check_pair(pair: tuple[Path, Path]) -> tuple[str, str] | None:
    """(problem kind, message) for one pair, or None when it loads cleanly."""
    image_path, mask_path = pair
    try:
        _, mask, _ = read_pair(image_path, mask_path, max_side=_CHECK_MAX_SIDE)
    except ImageTooLargeError as error:
        return "over the pixel limit", str(error)
    except ImageReadError as error:
        return "unreadable", str(error)
    except PairMismatchError as error:
        return "size mismatch", str(error)
    if ((mask != 0) & (mask != 255)).any():
        return "soft mask", str(mask_path)
    return None


_WARNING_KINDS = ("soft mask", "over the pixel limit")


def check_dataset(spec: DatasetSpec, jobs: int = 1, strict_counts: bool = False) -> DatasetReport:
    """Check every pair of ``spec``; a pair count other than the release's is an error only with
    ``strict_counts`` (otherwise a warning: a partial copy)."""
    report = DatasetReport(spec)
    pairing = pair_files(spec.image_dir, spec.mask_dir)
    report.pairs = len(pairing.pairs)
    if spec.expected_count is not None and report.pairs != spec.expected_count:
        kind = "pair count" if strict_counts else "partial copy"
        report.add(kind, f"{report.pairs} of the release's {spec.expected_count} pairs", error=strict_counts)
    if not pairing.pairs:
        report.add("count", f"no image/mask pairs in {spec.image_dir} and {spec.mask_dir}")
    for path in pairing.unpaired_images:
        report.add("image without mask", str(path))
    for path in pairing.unpaired_masks:
        report.add("mask without image", str(path))
    for path in pairing.duplicates:
        report.add("duplicate stem (ignored)", str(path), error=False)
    if jobs > 1 and len(pairing.pairs) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_check_pair, pairing.pairs, chunksize=16))
    else:
        results = [_check_pair(pair) for pair in pairing.pairs]
    for result in results:
        if result is not None:
            kind, message = result
            report.add(kind, message, error=kind not in _WARNING_KINDS)
    return report


def print_report(report: DatasetReport, max_listed: int) -> None:
    spec = report.spec
    expected = f" (release: {spec.expected_count})" if spec.expected_count is not None else ""
    print(f"{spec.name}: {spec.image_dir} + {spec.mask_dir}")
    print(f"  pairs: {report.pairs}{expected}")
    for problems, label in ((report.errors, "ERROR"), (report.notes, "warning")):
        for kind, messages in problems.items():
            print(f"  {label}: {kind}: {len(messages)}")
            for message in messages[:max_listed]:
                print(f"    {message}")
            if len(messages) > max_listed:
                print(f"    ... and {len(messages) - max_listed} more")
    if "soft mask" in report.notes:
        print("  (masks with values other than 0 and 255 are binarised at >128 when loaded)")
    print(f"  -> {'ERRORS' if report.errors else 'OK'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dataset root folder")
    parser.add_argument("--name", help="registered dataset name (default: every layout found under ROOT)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--max-listed", type=int, default=10, help="files listed per problem kind")
    parser.add_argument("--strict-counts", action="store_true",
                        help="a pair count other than the release's is an error (default: a warning)")
    parser.add_argument("--max-pixels", type=float, metavar="N",
                        help="pixel limit of decoding (default 100e6, as training; 0: no limit)")
    args = parser.parse_args(argv)
    if args.max_pixels is not None:
        set_max_pixels(int(args.max_pixels))

    try:
        if args.name:
            specs = [resolve_dataset(args.name, args.root)]
        elif not args.root.is_dir():
            raise FileNotFoundError(f"dataset root {args.root} does not exist or is not a folder")
        else:
            specs = detect_datasets(args.root)
            if not specs:
                raise FileNotFoundError(
                    f"no known dataset layout under {args.root}; pass --name or see datasets/README.md"
                )
    except (KeyError, FileNotFoundError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2

    reports = [check_dataset(spec, jobs=args.jobs, strict_counts=args.strict_counts) for spec in specs]
    for report in reports:
        print_report(report, args.max_listed)
    failed = [report.spec.name for report in reports if report.errors]
    print(
        f"summary: {len(reports)} dataset(s) checked, {len(failed)} with errors{': ' if failed else ''}"
        f"{', '.join(failed)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
