"""On-disk cache of images and masks resized to a bounded long side.

``python datasets/cache.py ROOT --long-side 1280`` writes ``ROOT/.pgnet_cache/long1280/`` holding,
for each source file larger than that, a resized copy at the file's path relative to ROOT plus
``.jpg`` (images) or ``.png`` (masks), and ``manifest.json`` recording each source's original size,
modification time and byte count. A dataset whose transform resizes to at most the cache's long side
reads the cached copies instead of the sources; an entry whose source changed since is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pgnet.data.io import ImageReadError, read_image, read_mask
from pgnet.errors import UserError, format_list
from pgnet.writing import check_overwrites, write_image, write_text

CACHE_DIR_NAME = ".pgnet_cache"
MANIFEST_NAME = "manifest.json"
_JPEG_QUALITY = 95


def cache_dir_for(root: str | Path, long_side: int) -> Path:
    """Where the cache of ``root`` at ``long_side`` lives."""
    return Path(root) / CACHE_DIR_NAME / f"long{long_side}"


def _source_stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


@dataclass(frozen=True)
class CachedPair:
    """Cached copies of one image/mask pair and the pair's original (H, W)."""

    image: Path
    mask: Path
    original_size: tuple[int, int]


class ImageCache:
    """A cache directory and its manifest: source path -> cached copy."""

    def __init__(self, root: Path, long_side: int, entries: dict[str, dict]) -> None:
        self.root = Path(os.path.abspath(root))
        self.long_side = long_side
        self.directory = cache_dir_for(self.root, long_side)
        self.entries = entries  # relative source path (posix) -> {"size", "mtime_ns", "bytes", "kind"}

    @classmethod
    def load(cls, root: str | Path, long_side: int) -> ImageCache:
        """The cache of ``root`` at ``long_side`` (empty when it was never written)."""
        manifest = cache_dir_for(root, long_side) / MANIFEST_NAME
        entries = json.loads(manifest.read_text())["entries"] if manifest.is_file() else {}
        return cls(Path(root), long_side, entries)

    def save(self) -> None:
        """Write the manifest atomically."""
        write_text(self.directory / MANIFEST_NAME, json.dumps({"long_side": self.long_side, "entries": self.entries}))

    def _key(self, source: Path) -> str | None:
        relative = os.path.relpath(os.path.abspath(source), self.root)
        return None if relative.startswith("..") else Path(relative).as_posix()

    def cached_path(self, source: Path, kind: str) -> Path:
        """Path of the cached copy of ``source`` (kind 'image' or 'mask'), whether it exists or not."""
        key = self._key(source)
        if key is None:
            raise ValueError(f"{source} is not under the cache root {self.root}")
        return self.directory / (key + (".jpg" if kind == "image" else ".png"))

    def _fresh_entry(self, source: Path) -> dict | None:
        key = self._key(source)
        entry = self.entries.get(key) if key is not None else None
        if entry is None:
            return None
        try:
            stamp = _source_stamp(source)
        except OSError:
            return None
        return entry if (entry["mtime_ns"], entry["bytes"]) == stamp else None

    def lookup(self, image_path: Path, mask_path: Path) -> CachedPair | None:
        """The cached pair when both files have fresh cached copies, else None."""
        image_entry = self._fresh_entry(image_path)
        mask_entry = self._fresh_entry(mask_path)
        if image_entry is None or mask_entry is None or image_entry["size"] != mask_entry["size"]:
            return None
        return CachedPair(
            self.cached_path(image_path, "image"), self.cached_path(mask_path, "mask"), tuple(image_entry["size"])
        )

    def __len__(self) -> int:
        return len(self.entries)


def find_cache(root: str | Path, min_long_side: int | None) -> ImageCache | None:
    """The smallest cache at least ``min_long_side`` long in ``root`` or a parent folder, or None."""
    if min_long_side is None:
        return None
    folder = Path(os.path.abspath(root))
    for candidate_root in (folder, *folder.parents):
        base = candidate_root / CACHE_DIR_NAME
        if not base.is_dir():
            continue
        sides = sorted(
            int(entry.name[4:])
            for entry in base.iterdir()
            if entry.name.startswith("long") and entry.name[4:].isdigit() and (entry / MANIFEST_NAME).is_file()
        )
        usable = [side for side in sides if side >= min_long_side]
        if usable:
            return ImageCache.load(candidate_root, usable[0])
    return None


def resized_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(H, W) of ``size`` scaled so that its long side is ``long_side``."""
    scale = long_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@dataclass
class CacheReport:
    """What :func:`build_cache` did, pair by pair."""

    written: int = 0
    fresh: int = 0  # already cached and unchanged
    small: int = 0  # long side already at most the cache's: read from the source
    failed: list[str] = field(default_factory=list)  # "path: reason"

    def describe(self, directory: str | Path, max_listed: int = 20) -> str:
        """What was done to the cache in ``directory``, listing at most ``max_listed`` failures."""
        lines = [f"{directory}: {self.written} written, {self.fresh} already cached, {self.small} small enough "
                 f"to read as they are, {len(self.failed)} failed" + (" (run datasets/verify.py)" if self.failed else "")]
        if self.failed:
            lines.append("  failed: " + format_list(self.failed, max_listed, separator="\n  failed: "))
        return "\n".join(lines)


def _cache_pair(job: tuple[Path, Path, Path, int]) -> tuple[str, dict | None, str]:
    """Cache one pair in a worker: returns (status, manifest entries by kind or None, message)."""
    root, image_path, mask_path, long_side = job
    cache = ImageCache(root, long_side, {})
    try:
        image = read_image(image_path)
        mask = read_mask(mask_path)
    except ImageReadError as error:
        return "failed", None, str(error)
    size = image.shape[:2]
    if mask.shape != size:
        return (
            "failed",
            None,
            f"{image_path}: image is {size[1]}x{size[0]} but mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}",
        )
    if max(size) <= long_side:
        return "small", None, ""
    height, width = resized_size(size, long_side)
    small_image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    write_image(cache.cached_path(image_path, "image"), small_image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    write_image(cache.cached_path(mask_path, "mask"), small_mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    entries = {}
    for kind, source in (("image", image_path), ("mask", mask_path)):
        mtime_ns, size_bytes = _source_stamp(source)
        entries[kind] = {"kind": kind, "size": list(size), "mtime_ns": mtime_ns, "bytes": size_bytes}
    return "written", entries, ""


def build_cache(root: str | Path, pairs: Iterable[tuple[Path, Path]], long_side: int, jobs: int = 1) -> CacheReport:
    """Cache ``pairs`` (files under ``root``) at ``long_side``; unchanged entries are kept.

    Raises ``OverwriteError`` listing them, before writing anything, when a cached copy would land on
    a source file or on another copy.
    """
    if long_side < 16:
        raise UserError(f"long side must be at least 16, got {long_side}")
    cache = ImageCache.load(root, long_side)
    pairs = list(dict.fromkeys((Path(image), Path(mask)) for image, mask in pairs))
    check_overwrites(
        [(cache.cached_path(path, kind), path) for pair in pairs for path, kind in zip(pair, ("image", "mask"))],
        [path for pair in pairs for path in pair],
        what="cached copie",
    )
    report = CacheReport()
    todo = []
    for image_path, mask_path in pairs:
        cached = cache.lookup(image_path, mask_path)
        if cached is not None and cached.image.is_file() and cached.mask.is_file():
            report.fresh += 1
        else:
            todo.append((cache.root, Path(image_path), Path(mask_path), long_side))
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_cache_pair, todo, chunksize=8))
    else:
        results = [_cache_pair(job) for job in todo]
    for (_, image_path, mask_path, _), (status, entries, message) in zip(todo, results):
        if status == "written":
            report.written += 1
            cache.entries[cache._key(image_path)] = entries["image"]
            cache.entries[cache._key(mask_path)] = entries["mask"]
        elif status == "small":
            report.small += 1
        else:
            report.failed.append(message)
    cache.save()
    return report
