"""Writing files safely: the one atomic writer, the one image writer, and the overwrite check.

- :func:`atomic_write` writes through a temporary file beside the target, flushed to disk and renamed
  over it (then the folder is synced), so a kill or a full disk leaves the old file or the new one,
  never a truncated one. The file gets the usual permissions (0666 less the umask). A full disk is
  :class:`NoSpaceError`: "no space left on device while writing PATH", with nothing left behind.
  :func:`atomic_create` does the same for a file made otherwise (a hard link, a copy), and
  :func:`move_into_place` is its last step, for a file a third party wrote under a temporary name;
  :func:`is_no_space` tells whether an error of such a writer was a full disk.
- :func:`write_image` encodes an RGB, RGBA or gray uint8 picture by the path's suffix and writes it
  with :func:`atomic_write`; predictions, cut-outs and cache copies all go through it.
- :func:`check_overwrites` is run by every command before any work: no output may land on an input
  (a picture, a ground-truth mask) or on another output of the same run. :func:`check_new_file` is
  its form for a command that writes one named file (an ONNX export, a converted checkpoint): never
  over its input, and over an existing file only when asked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from pgnet.errors import UserError, format_list

_FULL_BYTES = 1 << 20  # a file system with less free space than this counts as full
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class NoSpaceError(OSError, UserError):
    """The disk (or quota) filled up while a file was written; the message names the file."""

    exit_status = 1  # met while working: nothing (or not everything) done (see pgnet.cli.common)

    def __init__(self, path: str | Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.path,)


class OverwriteError(FileExistsError, UserError):
    """Outputs that would be written over inputs or over each other; the message lists them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def _temporary_path(path: Path) -> Path:
    """A name beside ``path`` that no file has: ``.NAME.RANDOM.tmp`` (what ``remove_temporaries`` cleans)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        if not os.path.lexists(temporary):
            return temporary


def _sync_file(path: Path) -> None:
    """Flush a file's data to disk (opened for writing: Windows flushes only such handles)."""
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def move_into_place(temporary: str | Path, path: str | Path) -> Path:
    """Flush the finished file ``temporary`` to disk and rename it over ``path`` (same folder), then
    sync the folder: a kill leaves the old ``path`` or the new one. For files a third party writes (a
    video writer); :func:`atomic_create` and :func:`atomic_write` end with it."""
    temporary, path = Path(temporary), Path(path)
    _sync_file(temporary)
    os.replace(temporary, path)
    _sync_folder(path.parent)
    return path


def atomic_create(path: str | Path, create: Callable[[Path], None]) -> Path:
    """Have ``create(temporary)`` make the new file at a free temporary path beside ``path`` (written,
    hard-linked or copied there), then :func:`move_into_place` it; returns ``path``.

    Parents are created. On any error the temporary file is removed and ``path`` is untouched; a full
    disk raises :class:`NoSpaceError` naming ``path``.
    """
    path = Path(path)
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_path(path)
        create(temporary)
        move_into_place(temporary, path)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if _is_no_space(error) or (isinstance(error, (OSError, RuntimeError)) and _folder_is_full(path.parent)):
            raise NoSpaceError(path) from error
        raise
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(stream)`` on a new temporary binary file beside ``path``, then move it into place
    (see :func:`atomic_create`); returns ``path``. The file gets the usual permissions (0666 less the
    umask; mkstemp would give 0600)."""

    def create(temporary: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as stream:
            write(stream)

    return atomic_create(path, create)


def _folder_is_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left: torch reports a full disk as
    "unexpected pos ..." without the OS error."""
    try:
        status = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return status.f_bavail * status.f_frsize < _FULL_BYTES


def _is_no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it: torch wraps OS errors in RuntimeError) is a full disk."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, NoSpaceError):
            return False  # already named
        if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and "No space left on device" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def is_no_space(error: BaseException, folder: str | Path | None = None) -> bool:
    """Whether ``error`` means a full disk: an ENOSPC/EDQUOT error in it or its causes, or an OS or
    runtime error while ``folder``'s file system has (almost) no space left (encoders do not always
    say why a write failed)."""
    if _is_no_space(error):
        return True
    return folder is not None and isinstance(error, (OSError, RuntimeError)) and _folder_is_full(Path(folder))


@contextlib.contextmanager
def no_space_as_error(output: str | Path, folder: str | Path) -> Iterator[None]:
    """Inside the block, an error that means a full disk (:func:`is_no_space`, ``folder``'s file
    system) is raised as :class:`NoSpaceError` naming ``output``; other errors pass unchanged."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as error:
        if is_no_space(error, folder):
            raise NoSpaceError(output) from error
        raise


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview | np.ndarray) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    buffer = memoryview(data.tobytes() if isinstance(data, np.ndarray) else data)
    return atomic_write(path, lambda stream: stream.write(buffer))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def encode_image(picture: np.ndarray, suffix: str = ".png", parameters: Sequence[int] = ()) -> np.ndarray:
    """An H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA) uint8 picture encoded as ``suffix`` ('.png', '.jpg', ...)."""
    if picture.ndim == 3:
        conversion = cv2.COLOR_RGB2BGR if picture.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        picture = cv2.cvtColor(picture, conversion)
    ok, encoded = cv2.imencode(suffix, picture, list(parameters))
    if not ok:
        raise OSError(f"cannot encode a {picture.shape} {picture.dtype} picture as {suffix}")
    return encoded


def write_image(path: str | Path, picture: np.ndarray, parameters: Sequence[int] = ()) -> Path:
    """Write an H×W, H×W×3 (RGB) or H×W×4 (RGBA) uint8 picture, encoded by the path's suffix, atomically.

    ``parameters`` are OpenCV's ``imencode`` flags (e.g. ``[cv2.IMWRITE_JPEG_QUALITY, 95]``); non-ASCII
    paths work. The one image writer of the library.
    """
    path = Path(path)
    try:
        encoded = encode_image(picture, path.suffix.lower() or ".png", parameters)
    except (OSError, cv2.error) as error:
        raise OSError(f"cannot encode {path}: {error}") from None
    return write_bytes(path, encoded)


def _key(path: Path) -> Path:
    """A path's identity for collision checks (absolute, symlinks resolved, case as given)."""
    return Path(os.path.realpath(path))


def check_overwrites(outputs: Iterable[tuple[Path, Path]], inputs: Iterable[Path], what: str = "output") -> None:
    """Refuse a run whose outputs would overwrite an input or each other, before any work is done.

    ``outputs`` are (output path, what it is made from) pairs; ``inputs`` are every file the run reads
    (pictures, ground-truth masks, predictions). Raises :class:`OverwriteError` listing the
    colliding paths.
    """
    protected = {_key(Path(path)) for path in inputs}
    over_inputs: list[str] = []
    by_output: dict[Path, list[Path]] = {}
    for output, source in outputs:
        key = _key(Path(output))
        by_output.setdefault(key, []).append(Path(source))
        if key in protected:
            over_inputs.append(f"{output} (from {source})")
    if over_inputs:
        raise OverwriteError(
            f"{len(over_inputs)} {what}s would overwrite input files: {format_list(over_inputs, separator='; ')}; "
            "choose another output folder"
        )
    shared = [
        f"{output} (from {', '.join(map(str, sources))})" for output, sources in by_output.items() if len(sources) > 1
    ]
    if shared:
        raise OverwriteError(
            f"{len(shared)} {what}s would be written more than once in this run: {format_list(shared, separator='; ')}"
        )


def check_new_file(output: str | Path, inputs: Iterable[str | Path], overwrite: bool = False,
                   what: str = "output") -> Path:
    """Refuse, before any work, a single ``output`` file that is one of ``inputs`` (even when asked
    to overwrite), a folder, or (unless ``overwrite``) a file that exists; returns ``output``."""
    output = Path(output)
    key = _key(output)
    for source in inputs:
        if key == _key(Path(source)):
            raise OverwriteError(f"the {what} {output} is the input {source}: writing it would destroy the input; "
                                 "name another file")
    if output.is_dir():
        raise OverwriteError(f"the {what} {output} is a folder: name a file")
    if output.exists() and not overwrite:
        raise OverwriteError(f"the {what} {output} exists: pass --overwrite to replace it, or name another file")
    return output
