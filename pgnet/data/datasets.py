"""Image/mask datasets, built from plain config dicts, and mixing with repeat factors.

A bad sample never stops a run: :meth:`SODDataset.__getitem__` logs a warning naming the file and
returns None, which the collate functions drop and count. Problems that leave nothing to train on
(a missing root, no pairs, no readable pair) raise before training starts, naming the path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from pgnet.data.cache import ImageCache, find_cache
from pgnet.data.entry import ENTRY_DEFAULTS, SPLIT_KEYS, SYNTHETIC_KEYS
from pgnet.data.io import ImageReadError, PairMismatchError, binarize_mask, read_image, read_mask, read_pair
from pgnet.data.registry import (
    SYNTHETIC_NAME,
    DatasetNotFoundError,
    DatasetSpec,
    known_dataset_names,
    pair_dataset,
    resolve_dataset,
)
from pgnet.data.split import split_pairs
from pgnet.data.synthetic import SyntheticDataset
from pgnet.data.transforms import SampleTransform, build_eval_transform, to_sample
from pgnet.errors import UserError

logger = logging.getLogger(__name__)



class EmptyDatasetError(UserError):
    """A dataset with no usable sample."""


class SODDataset(Dataset):
    """Image/mask pairs from disk through a :class:`SampleTransform`.

    Items are dicts: ``image`` float32 3×H×W normalised, ``mask`` float32 1×H×W in [0, 1], ``name``
    (file stem) and ``size`` (original (H, W)); None, after a warning naming the file, for a pair that
    cannot be used. ``skipped`` counts those in this process (worker copies count their own; the
    collate functions report skips per batch).

    ``reduced_decode`` lets JPEGs decode at 1/2-1/8 scale down to the transform's input size;
    ``cache`` supplies pre-resized copies (see :mod:`pgnet.data.cache`).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | Path, str | Path]],
        transform: SampleTransform | None = None,
        *,
        cache: ImageCache | None = None,
        reduced_decode: bool = True,
        name: str = "dataset",
    ) -> None:
        self.pairs = [(Path(image), Path(mask)) for image, mask in pairs]
        self.transform = transform if transform is not None else build_eval_transform(None, resize_mask=True)
        self.cache = cache
        self.reduced_decode = reduced_decode
        self.name = name
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(image H×W×3 uint8 RGB, binarised mask uint8 0/255, original (H, W)) ready for the transform.

        Raises ImageReadError for an unreadable file and PairMismatchError for a size mismatch.
        """
        image_path, mask_path = self.pairs[index]
        loaded = self._load_cached(image_path, mask_path) if self.cache is not None else None
        if loaded is None:
            max_side = self.transform.input_size if self.reduced_decode else None
            loaded = read_pair(image_path, mask_path, max_side)
        image, mask, original = loaded
        mask = binarize_mask(mask).astype(np.uint8) * 255
        if self.transform.resizes_mask and mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        return image, mask, (int(original[0]), int(original[1]))

    def _load_cached(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        """The pair from the cache (the mask from the source when the transform keeps its size);
        None when the cache has no fresh, readable copy."""
        cached = self.cache.lookup(image_path, mask_path)
        if cached is None:
            return None
        try:
            image = read_image(cached.image)
            cached_mask = read_mask(cached.mask) if self.transform.resizes_mask else None
        except ImageReadError as error:
            logger.warning("unreadable cache copy, reading the source instead: %s", error)
            return None
        if cached_mask is not None:
            return image, cached_mask, cached.original_size
        mask = read_mask(mask_path)
        if mask.shape != cached.original_size:
            raise PairMismatchError(
                f"{image_path} is {cached.original_size[1]}x{cached.original_size[0]} but its mask {mask_path} "
                f"is {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask, cached.original_size

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            image, mask, original = self.load_pair(index)
        except (ImageReadError, PairMismatchError) as error:
            self.skipped += 1
            logger.warning("skipping sample %d of %s: %s", index, self.name, error)
            return None
        return to_sample(self.transform, image, mask, name=self.pairs[index][0].stem, size=original)

    def check_readable(self) -> int:
        """Index of the first usable pair; raises EmptyDatasetError naming the folder if none is."""
        first_error: Exception | None = None
        for index in range(len(self.pairs)):
            try:
                self.load_pair(index)
                return index
            except (ImageReadError, PairMismatchError) as error:
                first_error = first_error or error
        folder = self.pairs[0][0].parent if self.pairs else "(no pairs)"
        raise EmptyDatasetError(
            f"dataset {self.name} at {folder} has no readable image/mask pair "
            f"({len(self.pairs)} tried; first error: {first_error})"
        )


def _spec_from_config(config: dict[str, Any], name: str | None) -> DatasetSpec:
    """A DatasetSpec from ``name`` + ``root`` or from explicit ``image_dir`` + ``mask_dir``."""
    if "image_dir" in config or "mask_dir" in config:
        try:
            image_dir, mask_dir = Path(config.pop("image_dir")), Path(config.pop("mask_dir"))
        except KeyError as error:
            raise UserError(f"dataset {name}: image_dir and mask_dir go together") from error
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(f"dataset {name or 'folder'}: {folder} does not exist or is not a folder")
        root = Path(config.pop("root", os.path.commonpath([image_dir.absolute(), mask_dir.absolute()])))
        return DatasetSpec(name or image_dir.parent.name, root, image_dir, mask_dir, None)
    if name is None:
        raise UserError("a dataset config needs a name (and root), or image_dir and mask_dir")
    if "root" not in config:
        raise UserError(f"dataset {name}: missing root")
    return resolve_dataset(name, config.pop("root"))


def build_dataset(
    config: Mapping[str, Any] | DatasetSpec, transform: SampleTransform | None = None, *, check: bool = True
) -> Dataset:
    """One dataset from a config entry.

    ``config`` is a DatasetSpec or a dict: ``{name, root}`` for a registered layout, ``{image_dir,
    mask_dir}`` (optional ``name``) for any folder pair, or ``{name: synthetic, n, size, seed}``; a
    file dataset may keep one part of a held-out split (``split: train|val``, ``val_fraction``,
    ``split_seed``; see :mod:`pgnet.data.split`);
    ``repeat`` may be present but must be 1 (repeats belong to :func:`build_train_dataset`).
    File datasets also take ``cache`` (default True: use an on-disk cache when present) and
    ``reduced_decode`` (default True). With ``check``, a dataset whose pairs are all unreadable
    raises here instead of during training.
    """
    use_cache, reduced_decode, split = True, True, tuple(ENTRY_DEFAULTS[key] for key in SPLIT_KEYS)
    if isinstance(config, DatasetSpec):
        spec = config
    else:
        options = dict(config)
        name = options.pop("name", None)
        repeat = options.pop("repeat", 1)
        if repeat != 1:
            raise UserError(f"dataset {name}: repeat={repeat!r} only applies to a training mix (build_train_dataset)")
        if name is not None and name.lower() == SYNTHETIC_NAME:
            n, size, seed = (options.pop(key, ENTRY_DEFAULTS[key]) for key in SYNTHETIC_KEYS)
            _reject_unknown(options, SYNTHETIC_NAME, ("name", *SYNTHETIC_KEYS, "repeat"))
            return SyntheticDataset(n=n, size=size, seed=seed, transform=transform)
        use_cache = bool(options.pop("cache", True))
        reduced_decode = bool(options.pop("reduced_decode", True))
        split = tuple(options.pop(key, ENTRY_DEFAULTS[key]) for key in SPLIT_KEYS)
        spec = _spec_from_config(options, name)
        _reject_unknown(
            options, spec.name, ("name", "root", "image_dir", "mask_dir", "repeat", "cache", "reduced_decode",
                                 *SPLIT_KEYS)
        )

    pairing = pair_dataset(spec)
    if not pairing.pairs:
        raise EmptyDatasetError(
            f"dataset {spec.name}: no image/mask pairs in {spec.describe()} "
            f"({len(pairing.unpaired_images)} images, {len(pairing.unpaired_masks)} masks without a partner)"
        )
    if pairing.unpaired_images:
        logger.warning(
            "dataset %s: %d images have no mask in %s and are left out, e.g. %s",
            spec.name,
            len(pairing.unpaired_images),
            spec.mask_dir,
            pairing.unpaired_images[0].name,
        )
    if pairing.unpaired_masks:
        logger.warning(
            "dataset %s: %d masks have no image in %s and are left out, e.g. %s",
            spec.name,
            len(pairing.unpaired_masks),
            spec.image_dir,
            pairing.unpaired_masks[0].name,
        )
    for path in pairing.not_files:
        kind = "a folder" if path.is_dir() else "a link to nothing" if path.is_symlink() else "not a file"
        logger.warning("dataset %s: %s is %s and is left out", spec.name, path, kind)
    if spec.expected_count is not None and len(pairing.pairs) != spec.expected_count:
        logger.warning(
            "dataset %s at %s: %d pairs, the release has %d (run datasets/verify.py)",
            spec.name,
            spec.root,
            len(pairing.pairs),
            spec.expected_count,
        )
    pairs = split_pairs(pairing.pairs, *split, dataset=spec.name)
    dataset = SODDataset(pairs, transform, reduced_decode=reduced_decode, name=spec.name)
    if use_cache:
        dataset.cache = find_cache(spec.root, dataset.transform.input_size)
    if check:
        dataset.check_readable()
    return dataset


def _reject_unknown(options: Mapping[str, Any], name: str, valid: Sequence[str]) -> None:
    if options:
        raise UserError(f"dataset {name}: unknown config keys {sorted(options)}; valid keys: {', '.join(valid)}")


def build_train_dataset(
    configs: Sequence[Mapping[str, Any]], transform: SampleTransform | None = None, *, check: bool = True
) -> ConcatDataset:
    """Several datasets mixed with repeat factors, e.g. DUTS-TR ×1 + HRSOD-TR ×4 (the DH setting).

    Each config is a :func:`build_dataset` dict plus an integer ``repeat`` (default 1; 0 leaves the
    dataset out): the dataset appears that many times in the mix.
    """
    parts: list[Dataset] = []
    for config in configs:
        options = dict(config)
        repeat = options.pop("repeat", 1)
        if not isinstance(repeat, int) or repeat < 0:
            raise UserError(f"dataset {options.get('name')}: repeat must be a non-negative integer, got {repeat!r}")
        if repeat == 0:
            continue
        dataset = build_dataset(options, transform, check=check)
        parts.extend([dataset] * repeat)
    if not parts:
        raise EmptyDatasetError(
            f"no training data: the train list is empty or all repeats are 0 (known datasets: "
            f"{', '.join(known_dataset_names())})"
        )
    return ConcatDataset(parts)
