"""Checking a dataset on disk (``datasets/verify.py``): pair count against the release, unpaired
files, size mismatches, unreadable files, and the report of what was found.

Errors: unreadable, unpaired and mismatched files. Warnings: a pair count other than the release's
(a partial copy; an error with ``strict_counts``), pictures over the pixel limit (training and
evaluation skip them), soft masks, duplicate stems. Sizes are compared at full size (the image's
from its file header, whatever size it is decoded at).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pgnet.data.io import ImageReadError, ImageTooLargeError, PairMismatchError, read_pair
from pgnet.data.registry import DatasetSpec, pair_dataset
from pgnet.errors import format_list

# Decode JPEGs at 1/8 scale where possible: the whole file is still parsed, so corruption and
# truncation show, at a fraction of the full decode's cost. Sizes are compared on the full-size
# headers (read_pair), never on the reduced decode.
_CHECK_MAX_SIDE = 64
_WARNING_KINDS = ("soft mask", "over the pixel limit")


@dataclass
class DatasetReport:
    """Problems found in one dataset; ``errors`` make the check fail, ``notes`` (warnings) do not."""

    spec: DatasetSpec
    pairs: int = 0
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, message: str, error: bool = True) -> None:
        """Record one problem of ``kind``: an error, or a warning with ``error=False``."""
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


def check_dataset(spec: DatasetSpec, jobs: int = 1, strict_counts: bool = False) -> DatasetReport:
    """Check every pair of ``spec`` (in ``jobs`` processes); a pair count other than the release's is an
    error only with ``strict_counts`` (otherwise a warning: a partial copy)."""
    report = DatasetReport(spec)
    pairing = pair_dataset(spec)
    report.pairs = len(pairing.pairs)
    if spec.expected_count is not None and report.pairs != spec.expected_count:
        kind = "pair count" if strict_counts else "partial copy"
        report.add(kind, f"{report.pairs} of the release's {spec.expected_count} pairs", error=strict_counts)
    if not pairing.pairs:
        report.add("count", f"no image/mask pairs in {spec.describe()}")
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


def format_report(report: DatasetReport, max_listed: int = 10) -> str:
    """The report of one dataset, listing at most ``max_listed`` files per problem kind."""
    spec = report.spec
    expected = f" (release: {spec.expected_count})" if spec.expected_count is not None else ""
    lines = [f"{spec.name}: {spec.describe()}", f"  pairs: {report.pairs}{expected}"]
    for problems, label in ((report.errors, "ERROR"), (report.notes, "warning")):
        for kind, messages in problems.items():
            lines.append(f"  {label}: {kind}: {len(messages)}")
            lines.append("    " + format_list(messages, max_listed, separator="\n    "))
    if "soft mask" in report.notes:
        lines.append("  (masks with values other than 0 and 255 are binarised at >128 when loaded)")
    lines.append(f"  -> {'ERRORS' if report.errors else 'OK'}")
    return "\n".join(lines)


def format_summary(reports: Sequence[DatasetReport]) -> str:
    """One line: how many datasets were checked and which have errors."""
    failed = [report.spec.name for report in reports if report.errors]
    return (f"summary: {len(reports)} dataset(s) checked, {len(failed)} with errors{': ' if failed else ''}"
            f"{', '.join(failed)}")
