"""Known dataset layouts on disk, and matching image files to mask files.

A config names a dataset and its root (``name: DUTS-TR, root: data/DUTS``); :func:`resolve_dataset`
finds the image and mask folders under that root from the layout registered for the name. A few
names are unions of others (``DIS-TE`` = ``DIS-TE1`` … ``DIS-TE4``): their spec holds its parts'
specs, and :func:`pair_dataset` pairs the files of every part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgnet.data.io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, list_files
from pgnet.errors import UnknownNameError, UserError, format_list

# (image folder, mask folder) names used by many releases and re-packagings.
GENERIC_PAIR_DIRS: tuple[tuple[str, str], ...] = (
    ("image", "mask"),
    ("images", "masks"),
    ("Image", "Mask"),
    ("Imgs", "GT"),
    ("imgs", "gt"),
    ("img", "gt"),
    ("im", "gt"),
)


class DatasetNotFoundError(FileNotFoundError, UserError):
    """A dataset root that does not exist or holds no known layout; the message names the folders."""


@dataclass(frozen=True)
class DatasetLayout:
    """Where one dataset's images and masks live relative to its root.

    The image/mask folders are looked for inside each of ``split_dirs`` and then in the root itself
    (a root that points at the split folder), first the layout's own ``pair_dirs``, then the
    :data:`GENERIC_PAIR_DIRS`. A layout with ``parts`` has no folders of its own: it is the union of
    those registered datasets. ``metrics`` are metric groups the benchmark of this dataset reports
    beside the usual ones (DIS5K's ``HCE``), computed by default when it is evaluated.
    """

    name: str
    expected_count: int | None
    split_dirs: tuple[str, ...] = ()
    pair_dirs: tuple[tuple[str, str], ...] = ()
    source: str = ""
    aliases: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()

    def candidates(self, root: Path, specific_only: bool = False) -> list[tuple[Path, Path]]:
        """(image dir, mask dir) candidates under ``root``, most specific first.

        A candidate is specific when it uses one of the layout's own split folders (as a subfolder or
        as the root's name), or its own pair folders when those are not generic names;
        ``specific_only`` drops the others, so a plain ``image/`` + ``mask/`` root is not taken for UHRSD.
        """
        specific: list[tuple[Path, Path]] = []
        generic: list[tuple[Path, Path]] = []
        for split in (*self.split_dirs, ""):
            for pair in (*self.pair_dirs, *GENERIC_PAIR_DIRS):
                candidate = (root / split / pair[0], root / split / pair[1])
                own_pair = pair in self.pair_dirs and (pair not in GENERIC_PAIR_DIRS or not self.split_dirs)
                is_specific = bool(split) or own_pair or root.name in self.split_dirs
                target = specific if is_specific else generic
                if candidate not in specific and candidate not in generic:
                    target.append(candidate)
        return specific if specific_only else specific + generic


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset found on disk: its folders and the number of pairs its release has (if known).

    A union (``parts`` not empty) has the folders of its parts (:attr:`folders`); its ``image_dir``
    and ``mask_dir`` are then the folder holding them, which holds no pair itself.
    """

    name: str
    root: Path
    image_dir: Path
    mask_dir: Path
    expected_count: int | None = None
    parts: tuple[DatasetSpec, ...] = ()
    metrics: tuple[str, ...] = ()  # metric groups reported by default on this dataset (DatasetLayout.metrics)

    @property
    def folders(self) -> list[tuple[Path, Path]]:
        """(image folder, mask folder) of every part, or of the dataset itself."""
        if self.parts:
            return [folder for part in self.parts for folder in part.folders]
        return [(self.image_dir, self.mask_dir)]

    def describe(self) -> str:
        """Its folders as one line: ``IMAGES + MASKS`` (each part's, ``; ``-separated, for a union)."""
        return "; ".join(f"{image_dir} + {mask_dir}" for image_dir, mask_dir in self.folders)


@dataclass
class Pairing:
    """Images matched to masks by file stem."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)  # (image path, mask path)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)  # left out: another file has the same stem
    not_files: list[Path] = field(default_factory=list)  # left out: folders or dangling links named like images


_LAYOUTS: tuple[DatasetLayout, ...] = (
    DatasetLayout("DUTS-TR", 10553, ("DUTS-TR",), (("DUTS-TR-Image", "DUTS-TR-Mask"),), "DUTS"),
    DatasetLayout("DUTS-TE", 5019, ("DUTS-TE",), (("DUTS-TE-Image", "DUTS-TE-Mask"),), "DUTS"),
    DatasetLayout("HRSOD-TR", 1610, ("HRSOD_release", "HRSOD-TR", "HRSOD_TR"), (("HRSOD_train", "HRSOD_train_mask"),),
                  "HRSOD"),
    DatasetLayout("HRSOD-TE", 400, ("HRSOD_release", "HRSOD-TE", "HRSOD_TE"), (("HRSOD_test", "HRSOD_test_mask"),),
                  "HRSOD"),
    DatasetLayout("UHRSD-TR", 4932, ("UHRSD_TR", "UHRSD-TR"), (("image", "mask"),), "UHRSD"),
    DatasetLayout("UHRSD-TE", 988, ("UHRSD_TE", "UHRSD-TE"), (("image", "mask"),), "UHRSD"),
    DatasetLayout("UHRSD-TR-2K", 4932, ("UHRSD_TR_2K", "UHRSD-TR-2K"), (("image", "mask"),), "UHRSD"),
    DatasetLayout("UHRSD-TE-2K", 988, ("UHRSD_TE_2K", "UHRSD-TE-2K"), (("image", "mask"),), "UHRSD"),
    DatasetLayout("DAVIS-S", 92, ("DAVIS-S", "DAVIS_S"), (), "HRSOD"),
    DatasetLayout(
        "DUT-OMRON",
        5168,
        ("DUT-OMRON", "DUT_OMRON"),
        (("DUT-OMRON-image", "pixelwiseGT-new-PNG"),),
        "DUT-OMRON",
    ),
    DatasetLayout("ECSSD", 1000, ("ECSSD",), (("images", "ground_truth_mask"),), "ECSSD"),
    DatasetLayout("HKU-IS", 4447, ("HKU-IS", "HKU_IS", "HKUIS"), (("imgs", "gt"),), "HKU-IS"),
    DatasetLayout(
        "PASCAL-S",
        850,
        ("PASCAL-S", "PASCAL_S", "PASCALS"),
        (("datasets/imgs/pascal", "datasets/masks/pascal"), ("imgs/pascal", "masks/pascal")),
        "PASCAL-S",
    ),
    # DIS5K (Qin et al., ECCV 2022, github.com/xuebinqin/DIS): DIS5K/DIS-TR/{im,gt}, DIS5K/DIS-VD/{im,gt},
    # DIS5K/DIS-TE1/{im,gt} ... DIS-TE4; DIS-TE is the union of the four test sets. HCE is reported on all.
    DatasetLayout("DIS-TR", 3000, ("DIS-TR",), (("im", "gt"),), "DIS5K", metrics=("HCE",)),
    DatasetLayout("DIS-VD", 470, ("DIS-VD",), (("im", "gt"),), "DIS5K", metrics=("HCE",)),
    *(DatasetLayout(f"DIS-TE{i}", 500, (f"DIS-TE{i}",), (("im", "gt"),), "DIS5K", metrics=("HCE",))
      for i in range(1, 5)),
    DatasetLayout("DIS-TE", 2000, (), (), "DIS5K", parts=tuple(f"DIS-TE{i}" for i in range(1, 5)), metrics=("HCE",)),
    DatasetLayout("generic", None, (), GENERIC_PAIR_DIRS, "any folder with image/ and mask/", ("folder",)),
)


def _name_key(name: str) -> str:
    """Names compare case- and punctuation-insensitively: ``DUTS-TR``, ``duts_tr``, ``DUTSTR``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


SYNTHETIC_NAME = "synthetic"  # generated on the fly (pgnet.data.synthetic), no folders
LAYOUTS: dict[str, DatasetLayout] = {layout.name: layout for layout in _LAYOUTS}
_LAYOUTS_BY_KEY = {_name_key(name): layout for layout in _LAYOUTS for name in (layout.name, *layout.aliases)}


def known_dataset_names() -> list[str]:
    """Every name a dataset config accepts: the registered layouts in registry order, then ``synthetic``."""
    return [*LAYOUTS, SYNTHETIC_NAME]


def get_layout(name: str) -> DatasetLayout:
    """The registered layout for ``name``; raises UnknownNameError (a KeyError) listing the known names."""
    layout = _LAYOUTS_BY_KEY.get(_name_key(name))
    if layout is None:
        raise UnknownNameError(f"unknown dataset {name!r}; known datasets: {', '.join(LAYOUTS)}")
    return layout


def resolve_dataset(name: str, root: str | Path) -> DatasetSpec:
    """Find dataset ``name``'s image and mask folders under ``root``.

    ``root`` is the dataset's own root (``data/DUTS`` for DUTS-TE, as configs give it) or a folder
    holding the releases by name as ``datasets/README.md`` lays them out (``data``, holding ``DUTS/``,
    ``HRSOD/``, ``UHRSD/``, ``DAVIS-S/``, ...): the layout's release folder under it is tried second.
    Raises UnknownNameError (a KeyError) for an unknown name and DatasetNotFoundError (a
    FileNotFoundError), naming the root and the folders looked for, when the root does not exist or
    holds no matching layout. A union (``DIS-TE``) needs every part under ``root``.
    """
    layout = get_layout(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root {root} (for {layout.name}) does not exist or is not a folder")
    if layout.parts:
        return _resolve_union(layout, root)
    roots = [root]
    for release in (layout.source, layout.name):
        if release and release != root.name and (root / release).is_dir() and root / release not in roots:
            roots.append(root / release)
    candidates = [(base, pair) for base in roots for pair in layout.candidates(base)]
    for base, (image_dir, mask_dir) in candidates:
        if image_dir.is_dir() and mask_dir.is_dir():
            return DatasetSpec(layout.name, base, image_dir, mask_dir, layout.expected_count, metrics=layout.metrics)
    looked_for = format_list(
        (f"{image_dir.relative_to(root)} + {mask_dir.relative_to(root)}" for _, (image_dir, mask_dir) in candidates),
        6, separator="; ",
    )
    raise DatasetNotFoundError(
        f"no {layout.name} image/mask folders under {root}; looked for {looked_for} "
        "(see datasets/README.md for the expected layouts)"
    )


def _resolve_union(layout: DatasetLayout, root: Path) -> DatasetSpec:
    """The spec of a union layout: every part resolved under ``root``; its folder is the one holding them."""
    parts = []
    for part in layout.parts:
        try:
            parts.append(resolve_dataset(part, root))
        except DatasetNotFoundError as error:
            raise DatasetNotFoundError(f"{layout.name} is the union of {', '.join(layout.parts)}: {error}") from None
    base = Path(os.path.commonpath([spec.root for spec in parts]))
    return DatasetSpec(layout.name, base, base, base, layout.expected_count, tuple(parts), layout.metrics)


def detect_datasets(root: str | Path) -> list[DatasetSpec]:
    """Every registered layout found under ``root`` by its own folder names, one spec per folder pair.

    Generic folders straight under the root count only for the ``generic`` layout, so a plain
    ``image/`` + ``mask/`` folder is not mistaken for a named dataset. Unions are not listed (their
    parts are).
    """
    root = Path(root).expanduser()
    found: dict[tuple[Path, Path], DatasetSpec] = {}
    for layout in _LAYOUTS:
        if layout.parts:
            continue
        for image_dir, mask_dir in layout.candidates(root, specific_only=True):
            if (image_dir, mask_dir) not in found and image_dir.is_dir() and mask_dir.is_dir():
                found[image_dir, mask_dir] = DatasetSpec(layout.name, root, image_dir, mask_dir, layout.expected_count,
                                                         metrics=layout.metrics)
                break
    return list(found.values())


def find_datasets(root: str | Path, names: Sequence[str] | None = None) -> list[DatasetSpec]:
    """The datasets ``names`` under ``root`` (see :func:`resolve_dataset`), or without names every
    registered layout found there (:func:`detect_datasets`); raises DatasetNotFoundError when the root
    is missing or holds none."""
    if names:
        return [resolve_dataset(name, root) for name in names]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root {root} does not exist or is not a folder")
    specs = detect_datasets(root)
    if not specs:
        raise DatasetNotFoundError(f"no known dataset layout under {root}; pass --name or see datasets/README.md")
    return specs


def dataset_pairs(specs: Iterable[DatasetSpec]) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of every dataset in ``specs``, in order."""
    return [pair for spec in specs for pair in pair_dataset(spec).pairs]


def pair_dataset(spec: DatasetSpec) -> Pairing:
    """:func:`pair_files` of every folder pair of ``spec`` (a union's parts in order), merged; a stem met
    in an earlier part is a duplicate (left out), so the pairs' stems are unique."""
    merged = Pairing()
    stems: set[str] = set()
    for image_dir, mask_dir in spec.folders:
        pairing = pair_files(image_dir, mask_dir)
        for image, mask in pairing.pairs:
            if image.stem in stems:
                merged.duplicates += [image, mask]
            else:
                stems.add(image.stem)
                merged.pairs.append((image, mask))
        merged.unpaired_images += pairing.unpaired_images
        merged.unpaired_masks += pairing.unpaired_masks
        merged.duplicates += pairing.duplicates
        merged.not_files += pairing.not_files
    return merged


def _index_by_stem(files: list[Path], extensions: tuple[str, ...]) -> tuple[dict[str, Path], list[Path]]:
    """Map stem -> file, preferring the earlier extension; returns the map and the files left out."""
    preference = {extension: rank for rank, extension in enumerate(extensions)}
    by_stem: dict[str, Path] = {}
    duplicates: list[Path] = []
    for path in sorted(files, key=lambda p: (p.stem, preference[p.suffix.lower()])):
        if path.stem in by_stem:
            duplicates.append(path)
        else:
            by_stem[path.stem] = path
    return by_stem, duplicates


def pair_files(image_dir: str | Path, mask_dir: str | Path) -> Pairing:
    """Match images in ``image_dir`` to masks in ``mask_dir`` by file stem (not recursive)."""
    images, image_duplicates = _index_by_stem(list_files(image_dir, IMAGE_EXTENSIONS), IMAGE_EXTENSIONS)
    masks, mask_duplicates = _index_by_stem(list_files(mask_dir, MASK_EXTENSIONS), MASK_EXTENSIONS)
    return Pairing(
        pairs=[(images[stem], masks[stem]) for stem in sorted(images) if stem in masks],
        unpaired_images=[images[stem] for stem in sorted(images) if stem not in masks],
        unpaired_masks=[masks[stem] for stem in sorted(masks) if stem not in images],
        duplicates=image_duplicates + mask_duplicates,
        not_files=[
            path for folder, extensions in ((image_dir, IMAGE_EXTENSIONS), (mask_dir, MASK_EXTENSIONS))
            for path in sorted(Path(folder).iterdir())
            if not path.name.startswith(".") and path.suffix.lower() in extensions and not path.is_file()
        ],
    )
