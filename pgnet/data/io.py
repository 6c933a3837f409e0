"""Reading images and masks from disk with OpenCV, and listing image files.

Every reader returns plain numpy arrays in one convention: images H×W×3 uint8 RGB, masks H×W uint8
0..255 as stored. Anything OpenCV cannot decode raises :class:`ImageReadError`, naming the file.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

# Lower-case suffixes; a suffix matches case-insensitively. Order is the preference when one stem
# has several files (``a.jpg`` beside ``a.png``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")

# Ground truth above this value is foreground: the rule pysodmetrics (hence the evaluator) uses.
MASK_THRESHOLD = 128

_JPEG_SIGNATURE = b"\xff\xd8"
_REDUCED_COLOR_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD9)) | {0x01}


class ImageReadError(OSError, ValueError):
    """A file that cannot be read as an image or mask; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # keeps the two-argument constructor picklable across worker processes
        return type(self), (self.path, self.reason)


class PairMismatchError(ValueError):
    """An image and its mask differ in size."""


def _read_bytes(path: str | Path) -> np.ndarray:
    """The file's bytes as a uint8 array (np.fromfile also handles non-ASCII paths)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as error:
        raise ImageReadError(path, error.strerror or str(error)) from None
    if data.size == 0:
        raise ImageReadError(path, "empty file")
    return data


def jpeg_frame_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) stored in a JPEG's start-of-frame header, or None if ``data`` is not a JPEG.

    This is the size before any EXIF rotation; it only reads the marker segments before the frame.
    """
    view = memoryview(data).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
    if bytes(view[:2]) != _JPEG_SIGNATURE:
        return None
    position, end = 2, len(view)
    while position + 4 <= end:
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        if marker in _JPEG_SOF_MARKERS:
            if position + 9 > end:
                return None
            height = (view[position + 5] << 8) | view[position + 6]
            width = (view[position + 7] << 8) | view[position + 8]
            return height, width
        position += 2 + ((view[position + 2] << 8) | view[position + 3])
    return None


def jpeg_reduction_factor(frame_size: tuple[int, int], max_side: int) -> int:
    """Largest of 1, 2, 4, 8 that keeps both sides of the reduced JPEG at least ``max_side`` long."""
    short_side = min(frame_size)
    for factor in (8, 4, 2):
        if -(-short_side // factor) >= max_side:  # libjpeg rounds the scaled size up
            return factor
    return 1


def read_image(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB.

    EXIF orientation is applied; grayscale, RGBA (alpha dropped), 16-bit (top 8 bits kept) and
    palette images are converted. ``max_side`` is the side length the caller will resize to (e.g.
    1024 for a 1024×1024 input): a JPEG is then decoded by libjpeg at 1/2, 1/4 or 1/8 scale, but only
    while both of its sides stay at least ``max_side`` long, so the later resize sees no less detail
    than it would need. Other formats, and ``max_side=None``, decode at full size.
    """
    data = _read_bytes(path)
    flags = cv2.IMREAD_COLOR
    if max_side is not None:
        frame_size = jpeg_frame_size(data)
        if frame_size is not None:
            factor = jpeg_reduction_factor(frame_size, max_side)
            flags = _REDUCED_COLOR_FLAGS.get(factor, cv2.IMREAD_COLOR)
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(path, "cannot decode image (corrupt, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _orientations(image: np.ndarray) -> list[np.ndarray]:
    """The eight rotations and mirror images of an H×W(×C) array (EXIF orientations 1-8)."""
    rotations = [np.rot90(image, turns) for turns in range(4)]
    return rotations + [np.fliplr(rotated) for rotated in rotations]


def read_image_with_alpha(path: str | Path) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB, or H×W×4 RGBA when the file has transparency.

    Like :func:`read_image` at full size (EXIF orientation applied), plus the alpha channel of an
    RGBA, gray+alpha or palette-with-transparency file (16-bit alpha keeps its top 8 bits).
    """
    data = _read_bytes(path)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(path, "cannot decode image (corrupt, truncated or not an image)")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    stored = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # as stored: alpha kept, EXIF orientation not applied
    if stored is None or stored.ndim != 3 or stored.shape[2] != 4:
        return rgb
    if stored.dtype == np.uint16:
        stored = (stored >> 8).astype(np.uint8)
    # The alpha takes the orientation that maps the stored colours onto the decoded picture.
    candidates = [(index, view) for index, view in enumerate(_orientations(stored)) if view.shape[:2] == image.shape[:2]]
    errors = [np.abs(view[::4, ::4, :3].astype(np.int16) - image[::4, ::4]).mean() for _, view in candidates]
    oriented = candidates[int(np.argmin(errors))][1]
    return np.dstack((rgb, np.ascontiguousarray(oriented[:, :, 3])))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as H×W uint8 0..255, values as stored (not binarised; see :func:`binarize_mask`).

    Colour masks become gray by the luma rule of ``cv2.IMREAD_GRAYSCALE``; an RGBA mask whose colour
    channels are uniform takes its alpha channel; 16-bit masks keep their top 8 bits.
    """
    data = _read_bytes(path)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ImageReadError(path, "cannot decode mask (corrupt, truncated or not an image)")
    if mask.ndim == 3 and mask.shape[2] == 4:
        colour, alpha = mask[..., :3], mask[..., 3]
        if colour.min() == colour.max() and alpha.min() != alpha.max():
            mask = alpha
        else:
            mask = colour
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY) if mask.shape[2] == 3 else mask[..., 0]
    if mask.dtype == np.uint16:
        mask = (mask >> 8).astype(np.uint8)
    elif mask.dtype == np.bool_:
        mask = mask.astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        raise ImageReadError(path, f"unsupported mask pixel type {mask.dtype}")
    return np.ascontiguousarray(mask)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Foreground of a 0..255 mask by the evaluator's rule (``mask > 128``), as a bool array."""
    return mask > MASK_THRESHOLD


def _decoded_sizes(original: tuple[int, int], max_side: int | None) -> set[tuple[int, int]]:
    """Sizes :func:`read_image` may return for an image of ``original`` size with ``max_side``."""
    sizes = {original}
    if max_side is not None:
        factor = jpeg_reduction_factor(original, max_side)
        sizes.add((-(-original[0] // factor), -(-original[1] // factor)))
    return sizes


def read_pair(
    image_path: str | Path, mask_path: str | Path, max_side: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(image RGB, mask 0..255 as stored, original (H, W)) of one pair, checked to match in size.

    The image may be decoded reduced (see :func:`read_image`); the mask is read at full size.
    Raises ImageReadError or PairMismatchError naming the files.
    """
    mask = read_mask(mask_path)
    original = (int(mask.shape[0]), int(mask.shape[1]))
    image = read_image(image_path, max_side=max_side)
    if image.shape[:2] not in _decoded_sizes(original, max_side):
        decoded = "" if image.shape[:2] == original else " (decoded reduced)"
        raise PairMismatchError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]}{decoded} but its mask {mask_path} is "
            f"{original[1]}x{original[0]}"
        )
    return image, mask, original


def _has_extension(path: Path, extensions: Iterable[str]) -> bool:
    return path.suffix.lower() in extensions


def list_files(folder: str | Path, extensions: Iterable[str], recursive: bool = False) -> list[Path]:
    """Files under ``folder`` whose suffix is one of ``extensions``, sorted; hidden files are ignored."""
    folder = Path(folder)
    extensions = tuple(extensions)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if not path.name.startswith(".") and _has_extension(path, extensions) and path.is_file()
    )


def list_images(source: str | Path, recursive: bool = False) -> list[Path]:
    """Image files named by ``source``: a file, a folder (``recursive``: with subfolders) or a glob.

    Raises FileNotFoundError when ``source`` is neither an existing path nor a pattern that matches,
    and ValueError for a single file that is not an image.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return list_files(path, IMAGE_EXTENSIONS, recursive=recursive)
    if path.is_file():
        if not _has_extension(path, IMAGE_EXTENSIONS):
            raise ValueError(f"{path} is not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    matches = [Path(match) for match in glob.glob(str(path), recursive=recursive)]
    if not matches:
        raise FileNotFoundError(f"no such file, folder or matching pattern: {source}")
    return sorted(match for match in matches if match.is_file() and _has_extension(match, IMAGE_EXTENSIONS))
