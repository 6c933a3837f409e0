"""Where the weights files come from: the known files, their hashes, and a resumable, checked download.

``KNOWN_FILES`` lists the released official PGNet checkpoint and the two ImageNet backbones the
official recipe starts from: each file's name, its official page, its direct URL where there is one,
where the project expects it, and its SHA-256 where it is known for certain (None otherwise;
torchvision's file names carry the first 8 hex digits of theirs, which is checked as torchvision's
hub does). A JSON file named by ``PGNET_WEIGHTS_REGISTRY`` (``{NAME: {"url": ..., "sha256": ...,
"page": ..., "destination": ..., "what": ...}}``) replaces fields of known files or adds files: a
mirror inside a firewall, or test servers.

:func:`download` fetches a URL (``http(s)://`` or ``file://``) into ``DEST.part`` with HTTP Range
requests, so an interrupted download continues where it stopped, checks the hash, and only then
renames the file into place (:func:`pgnet.writing.move_into_place`). :func:`check_known_file` is
what the loaders run on a file whose name is known: a file whose hash differs is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pgnet.errors import UserError
from pgnet.models.weights import CheckpointError
from pgnet.writing import move_into_place

REGISTRY_ENV = "PGNET_WEIGHTS_REGISTRY"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    """A weights file the project knows: where it comes from and how to check it."""

    name: str  # the file name, as released
    what: str
    page: str  # the official page that links it
    destination: str  # where the README and the configs expect it (relative to the working folder)
    url: str | None = None  # a direct download; None where the file is shared by a page (Google Drive)
    sha256: str | None = None  # the full SHA-256, where known for certain
    sha256_prefix: str | None = None  # the first hex digits the file name carries (torchvision)

    @property
    def hash_note(self) -> str:
        if self.sha256:
            return self.sha256
        if self.sha256_prefix:
            return f"starts with {self.sha256_prefix} (the rest unpublished)"
        return "unknown (none published)"


KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile(
        name="PGNet_DUT+HR.pth",
        what="the released PGNet trained on DUTS-TR + HRSOD-TR (the DH model; convert it or use it as it is)",
        page="https://drive.google.com/drive/folders/1hXwCvrdmvkaRePXWPTw5tjFXmrrzHPtt "
             "(linked from https://github.com/iCVTEAM/PGNet, model/README.md)",
        destination="PGNet_DUT+HR.pth",
    ),
    KnownFile(
        name="swin_base_patch4_window7_224_22k.pth",
        what="Swin-B, ImageNet-22k (Microsoft's Swin release): model.swin_pretrained of the official recipe",
        page="https://github.com/microsoft/Swin-Transformer",
        destination="pretrained/swin_base_patch4_window7_224_22k.pth",
        url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224_22k.pth",
    ),
    KnownFile(
        name="resnet18-5c106cde.pth",
        what="ResNet-18, ImageNet (torchvision's legacy file): model.resnet_pretrained of the official recipe",
        page="https://pytorch.org/vision/stable/models.html",
        destination="pretrained/resnet18-5c106cde.pth",
        url="https://download.pytorch.org/models/resnet18-5c106cde.pth",
        sha256_prefix="5c106cde",
    ),
)


class DownloadError(UserError):
    """A file that could not be fetched or whose hash is not the expected one; the message says which
    file to fetch and where to put it."""


def known_files() -> dict[str, KnownFile]:
    """The known files by name, with the entries of the ``PGNET_WEIGHTS_REGISTRY`` file applied."""
    files = {entry.name: entry for entry in KNOWN_FILES}
    source = os.environ.get(REGISTRY_ENV)
    if not source:
        return files
    try:
        overrides = json.loads(Path(source).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{REGISTRY_ENV}={source}: not a readable JSON file ({error})") from None
    allowed = {f.name for f in fields(KnownFile)} - {"name"}
    if not isinstance(overrides, Mapping):
        raise UserError(f"{REGISTRY_ENV}={source}: expected a mapping of file names to entries")
    for name, values in overrides.items():
        unknown = set(values) - allowed if isinstance(values, Mapping) else {"(not a mapping)"}
        if unknown:
            raise UserError(f"{REGISTRY_ENV}={source}: entry {name!r}: unknown fields {sorted(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        if name in files:
            hashes = {"sha256": None, "sha256_prefix": None} if {"sha256", "sha256_prefix"} & set(values) else {}
            files[name] = replace(files[name], **{**hashes, **values})
        else:
            values = {"what": name, "page": values.get("url", ""), "destination": name, **values}
            files[name] = KnownFile(name=name, **values)
    return files


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_problem(path: str | Path, entry: KnownFile) -> str | None:
    """Why ``path`` is not ``entry``'s file by its hash (None when it is, or when no hash is known)."""
    if not entry.sha256 and not entry.sha256_prefix:
        return None
    actual = sha256_of(path)
    expected = entry.sha256 or entry.sha256_prefix
    if actual.startswith(expected.lower()):
        return None
    return f"SHA-256 {actual}, expected {entry.hash_note}"


def check_known_file(path: str | Path, what: str = "weights") -> None:
    """Refuse a file named as a known file whose hash is known and differs (a truncated or other file)."""
    path = Path(path)
    entry = known_files().get(path.name)
    if entry is None:
        return
    problem = hash_problem(path, entry)
    if problem:
        raise CheckpointError(f"{what} {path}: not the released {entry.name} ({problem}); "
                              f"fetch it again: pgnet-weights get {entry.name}")


def manual_instructions(entry: KnownFile, destination: str | Path) -> str:
    """What to fetch by hand, from where, and where to put it."""
    source = f"{entry.url} (or from {entry.page})" if entry.url else entry.page
    return f"download {entry.name} from {source} and save it as {destination}"


def download(
    url: str,
    destination: str | Path,
    entry: KnownFile | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch ``url`` to ``destination``: into ``destination.part`` (continued with a Range request when
    it exists), checked against ``entry``'s hash, then renamed into place. ``progress(done, total)``
    is called as bytes arrive (total None when the server does not say).

    Raises :class:`DownloadError` naming the URL and what to do; the ``.part`` file is kept after a
    network error (the next call continues it) and removed after a hash mismatch.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    by_hand = manual_instructions(entry, destination) if entry else f"download {url} and save it as {destination}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = getattr(response, "status", None)
            if start and status != 206:  # the server ignored the range: start over
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with open(partial, "ab" if start else "wb") as stream:
                done = start
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    stream.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except urllib.error.HTTPError as error:
        if not (error.code == 416 and start):  # 416 with a partial file: it is already whole
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}; {by_hand}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        kept = f" (what arrived is kept in {partial}: the next try continues it)" if partial.exists() else ""
        raise DownloadError(f"{url}: {reason}{kept}; try again, or {by_hand}") from None
    problem = hash_problem(partial, entry) if entry is not None else None
    if problem:
        partial.unlink()
        raise DownloadError(f"{url}: the file that arrived is not the expected one ({problem}); removed; "
                            f"try again, or {by_hand}")
    return move_into_place(partial, destination)
