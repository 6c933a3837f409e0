"""Scoring prediction files: prediction folders matched to mask folders by file stem, then scored.

``match_predictions`` pairs them and reports the missing and the extra ones; ``accumulate_folder``
reads the pairs ahead in threads (``pgnet.data.prefetch``) and adds them to the metrics, resizing a
prediction whose size differs from its mask's. ``pgnet.evaluation.evaluator`` runs them per dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pgnet.data.io import MASK_EXTENSIONS, list_files, read_mask
from pgnet.data.prefetch import prefetch
from pgnet.data.registry import DatasetNotFoundError
from pgnet.metrics import SODMetrics

PREDICTION_EXTENSIONS = MASK_EXTENSIONS


@dataclass
class FolderMatch:
    """Prediction files matched to masks by stem."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (name, prediction, mask)
    missing: list[str] = field(default_factory=list)  # masks without a prediction
    extra: list[str] = field(default_factory=list)  # predictions without a mask


def _files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """Image files in ``folder`` by stem (the earlier extension of MASK_EXTENSIONS wins); errors name
    the folder when it is missing or holds no image file."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{what} folder {folder} does not exist or is not a folder")
    files = list_files(folder, PREDICTION_EXTENSIONS)
    if not files:
        raise DatasetNotFoundError(f"{what} folder {folder} holds no image files ({', '.join(PREDICTION_EXTENSIONS)})")
    preference = {extension: rank for rank, extension in enumerate(PREDICTION_EXTENSIONS)}
    by_stem: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: (p.stem, preference[p.suffix.lower()])):
        by_stem.setdefault(path.stem, path)
    return by_stem


def _files_in(folders: str | Path | Sequence[str | Path], what: str) -> dict[str, Path]:
    """``_files_by_stem`` of one folder or several (a stem met in an earlier folder wins)."""
    if isinstance(folders, (str, Path)):
        return _files_by_stem(Path(folders), what)
    found: dict[str, Path] = {}
    for folder in folders:
        for stem, path in _files_by_stem(Path(folder), what).items():
            found.setdefault(stem, path)
    return found


def match_predictions(prediction_dir: str | Path | Sequence[str | Path],
                      mask_dir: str | Path | Sequence[str | Path]) -> FolderMatch:
    """Pair ``prediction_dir``'s files with ``mask_dir``'s masks by file stem (sorted by name); either
    may be several folders (a union dataset's parts), read as one."""
    masks = _files_in(mask_dir, "mask")
    predictions = _files_in(prediction_dir, "prediction")
    return FolderMatch(
        pairs=[(name, predictions[name], masks[name]) for name in sorted(masks) if name in predictions],
        missing=[name for name in sorted(masks) if name not in predictions],
        extra=[name for name in sorted(predictions) if name not in masks],
    )


def prediction_folder(method_dir: str | Path, dataset: str, single_dataset: bool) -> Path:
    """Where a method's predictions for ``dataset`` are: ``method_dir/dataset``, or ``method_dir``
    itself when it has no such subfolder and only one dataset is evaluated."""
    method_dir = Path(method_dir)
    nested = method_dir / dataset
    if nested.is_dir() or not single_dataset:
        return nested
    return method_dir


def _read_pair(prediction: Path, mask: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """(prediction resized to the mask if needed, mask, the prediction's original (H, W) if resized)."""
    gt = read_mask(mask)
    pred = read_mask(prediction)
    if pred.shape == gt.shape:
        return pred, gt, None
    resized = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return resized, gt, (int(pred.shape[0]), int(pred.shape[1]))


def _read_pairs(pairs: Sequence[tuple[str, Path, Path]], workers: int
                ) -> Iterator[tuple[Path, tuple[np.ndarray, np.ndarray, tuple[int, int] | None]]]:
    """(prediction file, ``_read_pair``) of each pair in order, read by ``workers`` threads at most
    ``2·workers`` ahead (decoding releases the GIL); in this thread when ``workers`` is 0."""
    if workers <= 0:
        yield from ((prediction, _read_pair(prediction, mask)) for _, prediction, mask in pairs)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="pgnet-eval-read") as pool:
        for (_, prediction, _), future in prefetch(pool, lambda pair: _read_pair(*pair[1:]), pairs, 2 * workers + 1):
            yield prediction, future.result()


def accumulate_folder(
    pairs: Sequence[tuple[str, Path, Path]],
    metrics: SODMetrics,
    device: torch.device | str = "cpu",
    *,
    workers: int = 2,
    progress: bool = False,
    description: str | None = None,
) -> tuple[int, list[str]]:
    """Score (name, prediction file, mask file) pairs; returns (images scored, resize notes).

    A prediction whose size differs from its mask's is resized to it (bilinear) and noted.
    Unreadable files raise ``ImageReadError`` naming the file.
    """
    device = torch.device(device)
    resized: list[str] = []
    count = 0
    for prediction, (pred, gt, original) in tqdm(
        _read_pairs(pairs, workers), total=len(pairs), desc=description, unit="img", disable=not progress, leave=False
    ):
        if original is not None:
            resized.append(f"{prediction.name} {original[1]}x{original[0]} -> {gt.shape[1]}x{gt.shape[0]}")
        metrics.update(torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device))
        count += 1
    return count, resized
