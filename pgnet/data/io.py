"""Reading images and masks from disk with OpenCV, and listing image files.

Every reader returns plain numpy arrays in one convention: images H×W×3 uint8 RGB, masks H×W uint8
0..255 as stored. Anything OpenCV cannot decode raises :class:`ImageReadError`, naming the file.
Every reader runs one decode guard first (:func:`decoding_size`): the format is recognised by the
file's content, its size read from its header, and a picture over the pixel limit, or whose size no
header gives, is refused before a pixel is decoded.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from pgnet.errors import UserError

# Lower-case suffixes; a suffix matches case-insensitively. Order is the preference when one stem
# has several files (``a.jpg`` beside ``a.png``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")

# Decoding limit (pixels actually decoded): a 100 MP default fits 8K photos (33 MP) with room, and
# bounds one decode to ~0.3 GB of RGB; PGNET_MAX_PIXELS overrides it (0: no limit).
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PGNET_MAX_PIXELS"

# Ground truth above this value is foreground: the rule pysodmetrics (hence the evaluator) uses.
MASK_THRESHOLD = 128

_JPEG_SIGNATURE = b"\xff\xd8"
_REDUCED_COLOR_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD9)) | {0x01}


class ImageReadError(OSError, UserError):
    """A file that cannot be read as an image or mask; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # keeps the two-argument constructor picklable across worker processes
        return type(self), (self.path, self.reason)


class ImageTooLargeError(ImageReadError):
    """A picture over the decoding pixel limit (see :func:`max_pixels_limit`); skipped undecoded."""


class PairMismatchError(UserError):
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


# ---------------------------------------------------------------------------------------------
# Picture formats and sizes from file headers (no decoding), for every format this OpenCV decodes:
# PNG, JPEG, WebP, BMP, TIFF, GIF, Radiance HDR, PBM/PGM/PPM, PAM, PFM, Sun raster, OpenEXR, JPEG 2000
# and AVIF, recognised by content as OpenCV does (OpenCV cannot read a header without decoding, and
# Pillow is not a runtime dependency).

ByteReader = Callable[[int, int], bytes]  # (offset, count) -> the bytes there (fewer at the end)


def _bytes_reader(data: bytes | np.ndarray) -> ByteReader:
    view = memoryview(data).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
    return lambda offset, count: bytes(view[offset : offset + count])


def _file_reader(stream: BinaryIO) -> ByteReader:
    def read(offset: int, count: int) -> bytes:
        stream.seek(offset)
        return stream.read(count)

    return read


def _tiff_tags(read: ByteReader, base: int, wanted: frozenset[int]) -> dict[int, int]:
    """Values of the ``wanted`` SHORT/LONG tags of the first IFD of a TIFF (or BigTIFF) structure at ``base``."""
    header = read(base, 16)
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        big, order = False, "<" if header[:2] == b"II" else ">"
    elif header[:4] in (b"II+\x00", b"MM\x00+"):  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        big, order = True, "<" if header[:2] == b"II" else ">"
    else:
        return {}
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    (offset,) = struct.unpack(order + offset_format, header[8:16] if big else header[4:8])
    count_size = struct.calcsize(count_format)
    count_bytes = read(base + offset, count_size)
    if len(count_bytes) < count_size:
        return {}
    (count,) = struct.unpack(order + count_format, count_bytes)
    entries = read(base + offset + count_size, entry_size * min(count, 4096))
    value_at = 12 if big else 8
    values = {}
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack(order + "HH", entries[start : start + 4])
        if tag in wanted and kind in (3, 4, 16):  # SHORT, LONG, LONG8 (BigTIFF)
            fmt = order + {3: "H", 4: "I", 16: "Q"}[kind]
            values[tag] = struct.unpack(fmt, entries[start + value_at : start + value_at + struct.calcsize(fmt)])[0]
    return values


def _jpeg_header(read: ByteReader) -> tuple[tuple[int, int] | None, int]:
    """(frame (H, W) before EXIF rotation or None, EXIF orientation 1-8) of a JPEG."""
    position, orientation = 2, 1
    while True:
        head = read(position, 4)
        if len(head) < 4 or head[0] != 0xFF:
            return None, orientation
        marker = head[1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None, orientation
        length = (head[2] << 8) | head[3]
        if marker in _JPEG_SOF_MARKERS:
            frame = read(position + 5, 4)
            if len(frame) < 4:
                return None, orientation
            return ((frame[0] << 8) | frame[1], (frame[2] << 8) | frame[3]), orientation
        if marker == 0xE1 and read(position + 4, 6) == b"Exif\x00\x00":
            orientation = _tiff_tags(read, position + 10, frozenset({274})).get(274, orientation)
        position += 2 + length


def _pnm_tokens(read: ByteReader, count: int) -> list[bytes]:
    """The first ``count`` header tokens of a PBM/PGM/PPM/PFM file after its magic (comments skipped)."""
    text = read(2, 1024)
    tokens: list[bytes] = []
    for line in text.split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= count:
            return tokens[:count]
    return tokens


def _pam_size(read: ByteReader) -> tuple[int, int] | None:
    fields = {}
    for line in read(2, 1024).split(b"\n"):
        words = line.split(b"#", 1)[0].split()
        if words[:1] == [b"ENDHDR"]:
            break
        if len(words) >= 2:
            fields[words[0]] = words[1]
    if b"WIDTH" in fields and b"HEIGHT" in fields:
        return int(fields[b"HEIGHT"]), int(fields[b"WIDTH"])
    return None


def _radiance_size(read: ByteReader) -> tuple[int, int] | None:
    """Radiance HDR: header lines, an empty line, then the resolution line (``-Y H +X W``)."""
    header = read(0, 8192)
    end = header.find(b"\n\n")
    if end < 0:
        return None
    words = header[end + 2 :].split(b"\n", 1)[0].split()
    if len(words) != 4 or words[0][1:] not in (b"X", b"Y") or words[2][1:] not in (b"X", b"Y"):
        return None
    first, second = int(words[1]), int(words[3])
    return (first, second) if words[0][1:] == b"Y" else (second, first)


def _openexr_size(read: ByteReader) -> tuple[int, int] | None:
    """OpenEXR: the ``dataWindow`` (box2i) among the header's attributes."""
    header, position = read(8, 65536), 0
    while position < len(header) and header[position] != 0:
        name_end = header.index(b"\0", position)
        type_end = header.index(b"\0", name_end + 1)
        (length,) = struct.unpack("<i", header[type_end + 1 : type_end + 5])
        value = header[type_end + 5 : type_end + 5 + length]
        if header[position:name_end] == b"dataWindow" and len(value) == 16:
            x_min, y_min, x_max, y_max = struct.unpack("<4i", value)
            return y_max - y_min + 1, x_max - x_min + 1
        position = type_end + 5 + length
    return None


def _boxes(read: ByteReader, start: int, end: int | None) -> list[tuple[bytes, int, int]]:
    """(type, data start, data end) of the ISO/JP2 boxes between ``start`` and ``end`` (None: the file's end)."""
    boxes, position = [], start
    while (end is None or position + 8 <= end) and len(boxes) < 256:
        head = read(position, 16)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I", head[:4])[0], head[4:8]
        data = position + 8
        if length == 1:
            length, data = struct.unpack(">Q", head[8:16])[0], position + 16
        stop = (end if end is not None else position + (1 << 62)) if length == 0 else position + length
        if stop <= position:
            break
        boxes.append((kind, data, stop))
        position = stop
    return boxes


def _jpeg2000_size(read: ByteReader, offset: int) -> tuple[int, int] | None:
    """The image area of a JPEG 2000 codestream's SIZ segment at ``offset``."""
    siz = read(offset, 24)
    if siz[:4] != b"\xff\x4f\xff\x51" or len(siz) < 24:
        return None
    width, height, x_offset, y_offset = struct.unpack(">4I", siz[8:24])
    return height - y_offset, width - x_offset


def _jp2_size(read: ByteReader) -> tuple[int, int] | None:
    for kind, data, _ in _boxes(read, 0, None):
        if kind == b"jp2c":
            return _jpeg2000_size(read, data)
    return None


def _avif_size(read: ByteReader) -> tuple[int, int] | None:
    """AVIF: the largest ``ispe`` (image spatial extents) among the item properties (meta/iprp/ipco)."""
    sizes = []
    for kind, data, stop in _boxes(read, 0, None):
        if kind != b"meta":
            continue
        for child, child_data, child_stop in _boxes(read, data + 4, stop):  # meta is a full box
            if child != b"iprp":
                continue
            for container, container_data, container_stop in _boxes(read, child_data, child_stop):
                if container != b"ipco":
                    continue
                for item, item_data, _ in _boxes(read, container_data, container_stop):
                    if item == b"ispe":
                        width, height = struct.unpack(">II", read(item_data + 4, 8))
                        sizes.append((height, width))
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


def _webp_size(read: ByteReader, head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(read(27, 3), "little") + 1
        return height, width
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", read(26, 4))
        return height & 0x3FFF, width & 0x3FFF
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 26:
        return None
    (header_size,) = struct.unpack("<I", head[14:18])
    if header_size == 12:
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
    return abs(height), abs(width)


def _probe(read: ByteReader) -> tuple[str | None, tuple[int, int] | None, int]:
    """(format, (H, W) stored in the header, EXIF orientation) of a picture, recognised by its content
    (as OpenCV does, whatever the file's name): every format this OpenCV decodes. The format is None
    for content that is none of them, the size None where the header cannot be read."""
    head = read(0, 32)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", (struct.unpack(">II", head[16:24])[::-1] if head[12:16] == b"IHDR" else None), 1
    if head.startswith(_JPEG_SIGNATURE):
        return ("JPEG", *_jpeg_header(read))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP", _webp_size(read, head), 1
    if head[:2] == b"BM":
        return "BMP", _bmp_size(head), 1
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        tags = _tiff_tags(read, 0, frozenset({256, 257}))  # OpenCV does not rotate TIFFs by their orientation tag
        return "TIFF", ((tags[257], tags[256]) if 256 in tags and 257 in tags else None), 1
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        return "GIF", (height, width), 1
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "Radiance HDR", _radiance_size(read), 1
    if head[:2] in (b"PF", b"Pf") or (head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2):
        name = "PFM" if head[1:2] in b"Ff" else "PBM/PGM/PPM"
        tokens = _pnm_tokens(read, 2)
        return name, ((int(tokens[1]), int(tokens[0])) if len(tokens) == 2 else None), 1
    if head[:2] == b"P7":
        return "PAM", _pam_size(read), 1
    if head[:4] == b"\x59\xa6\x6a\x95":
        width, height = struct.unpack(">ii", head[4:12])
        return "Sun raster", (height, width), 1
    if head[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR", _openexr_size(read), 1
    if head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000", _jpeg2000_size(read, 0), 1
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return "JPEG 2000", _jp2_size(read), 1
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1"):
        return "AVIF", _avif_size(read), 1
    return None, None, 1


def _header(source: str | Path | bytes | np.ndarray) -> tuple[str | None, tuple[int, int] | None, int]:
    """:func:`_probe` of a path or of the file's bytes; a header that breaks the parser has no size."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
            kind, size, orientation = _probe(_bytes_reader(source))
        else:
            with open(source, "rb") as stream:
                kind, size, orientation = _probe(_file_reader(stream))
    except (struct.error, ValueError, IndexError):
        return None, None, 1
    if size is None or min(size) < 1:
        return kind, None, orientation
    return kind, (int(size[0]), int(size[1])), orientation


def picture_format(source: str | Path | bytes | np.ndarray) -> str | None:
    """The picture format of a file (a path or its bytes) by its content, e.g. "PNG" or "Radiance
    HDR"; None for content OpenCV would not decode as a picture."""
    return _header(source)[0]


def probe_image_size(source: str | Path | bytes | np.ndarray, oriented: bool = True) -> tuple[int, int] | None:
    """(height, width) of a picture read from its header only, or None where the header gives none.

    ``source`` is a path or the file's bytes. ``oriented``: the size after the EXIF rotation a JPEG
    is decoded with (as :func:`read_image` returns it), else the stored frame size.
    """
    _, size, orientation = _header(source)
    if size is None:
        return None
    return (size[1], size[0]) if oriented and orientation in (5, 6, 7, 8) else size


def jpeg_frame_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) stored in a JPEG's start-of-frame header (before any EXIF rotation), or None
    if ``data`` is not a JPEG."""
    if bytes(memoryview(data).cast("B")[:2] if isinstance(data, np.ndarray) else data[:2]) != _JPEG_SIGNATURE:
        return None
    return probe_image_size(data, oriented=False)


def max_pixels_limit() -> int | None:
    """The pixel limit of decoding: ``PGNET_MAX_PIXELS`` (0 or ``none``: no limit) or 100 MP."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip().lower()
    if not value:
        return DEFAULT_MAX_PIXELS
    if value in ("0", "none", "off"):
        return None
    try:
        limit = int(float(value))
    except ValueError:
        raise UserError(f"{MAX_PIXELS_ENV}={value!r}: expected a number of pixels, or 0 for no limit") from None
    return limit if limit > 0 else None


def set_max_pixels(limit: int | None) -> None:
    """Set the decoding pixel limit of this process and the workers it starts (None or 0: no limit)."""
    os.environ[MAX_PIXELS_ENV] = str(int(limit or 0))


def decoding_size(path: str | Path, data: bytes | np.ndarray, factor: int = 1) -> tuple[int, int] | None:
    """The decode guard every reader runs before ``cv2.imdecode``: the stored (H, W) of ``data`` (the
    bytes of ``path``) read from its header, or None when no pixel limit is set.

    Under the limit (:func:`max_pixels_limit`), a picture is decoded only when its header gives its
    size: content that is no picture format, and a header whose size cannot be read, raise
    ImageReadError naming the format; a picture whose decode at 1/``factor`` scale is over the limit
    raises ImageTooLargeError. Nothing is decoded in either case.
    """
    kind, size, _ = _header(data)
    limit = max_pixels_limit()
    if limit is None:
        return size
    if kind is None:
        raise ImageReadError(path, "not a picture format OpenCV reads (recognised by content, whatever the name), "
                                   "or corrupt; not decoded")
    if size is None:
        raise ImageReadError(path, f"{kind} file whose size cannot be read from its header; not decoded under the "
                                   f"pixel limit (set {MAX_PIXELS_ENV}=0 to decode it anyway)")
    decoded = -(-size[0] // factor) * -(-size[1] // factor)
    if decoded > limit:
        raise ImageTooLargeError(
            path,
            f"{size[1]}x{size[0]} pixels ({size[0] * size[1] / 1e6:.0f} MP) is over the pixel limit of "
            f"{limit / 1e6:g} MP ({kind} by its content); skipped without decoding (raise it with --max-pixels or "
            f"{MAX_PIXELS_ENV})",
        )
    return size


def _decode(path: str | Path, data: np.ndarray, flags: int, what: str = "image") -> np.ndarray:
    """``cv2.imdecode`` of a file's bytes, after :func:`decoding_size`; ImageReadError naming the file
    when OpenCV cannot decode it (a codec disabled in this build, e.g. OpenEXR, included)."""
    try:
        decoded = cv2.imdecode(data, flags)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1]
        raise ImageReadError(path, f"cannot decode {what}: {reason}") from None
    if decoded is None:
        raise ImageReadError(path, f"cannot decode {what} (corrupt, truncated or not an image)")
    return decoded


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
    flags, factor = cv2.IMREAD_COLOR, 1
    size = probe_image_size(data, oriented=False)
    if max_side is not None and size is not None and data[:2].tobytes() == _JPEG_SIGNATURE:
        factor = jpeg_reduction_factor(size, max_side)
        flags = _REDUCED_COLOR_FLAGS.get(factor, cv2.IMREAD_COLOR)
    decoding_size(path, data, factor)
    image = _decode(path, data, flags)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes | np.ndarray, source: str = "upload") -> np.ndarray:
    """Decode a picture's bytes (a file received over the network, ...) as H×W×3 uint8 RGB.

    The decode guard (:func:`decoding_size`) runs first, as for files; undecodable bytes raise
    ``ImageReadError``. ``source`` names the bytes in messages.
    """
    data = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if data.size == 0:
        raise ImageReadError(source, "empty file")
    decoding_size(source, data)
    return cv2.cvtColor(_decode(source, data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


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
    decoding_size(path, data)
    image = _decode(path, data, cv2.IMREAD_COLOR)
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
    decoding_size(path, data)
    mask = _decode(path, data, cv2.IMREAD_UNCHANGED, "mask")
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


def _reduced(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size a JPEG of ``size`` is decoded at by :func:`read_image` with ``max_side``."""
    factor = jpeg_reduction_factor(size, max_side)
    return -(-size[0] // factor), -(-size[1] // factor)


def original_image_size(path: str | Path, decoded: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """The full (H, W), after EXIF rotation, of a picture ``read_image(path, max_side)`` decoded to ``decoded``.

    Only JPEGs are decoded reduced; their header (``probe_image_size``) gives the full size. None when
    the header does not account for ``decoded``: then decode at full size.
    """
    if min(decoded) < max_side:
        return decoded  # a reduced decode keeps both sides at least max_side long
    full = probe_image_size(path)
    if full is None or decoded == full:  # no header found: read_image decoded it at full size
        return decoded
    return full if decoded == _reduced(full, max_side) else None


def read_pair(
    image_path: str | Path, mask_path: str | Path, max_side: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(image RGB, mask 0..255 as stored, original (H, W)) of one pair, checked to match in size.

    The image may be decoded reduced (see :func:`read_image`); the sizes are compared at full size,
    the image's taken from its header (a JPEG exactly 2, 4 or 8 times its mask is a mismatch too).
    Raises ImageReadError or PairMismatchError naming the files and their real sizes.
    """
    mask = read_mask(mask_path)
    original = (int(mask.shape[0]), int(mask.shape[1]))
    image = read_image(image_path, max_side=max_side)
    decoded = (int(image.shape[0]), int(image.shape[1]))
    full = decoded if max_side is None else probe_image_size(image_path)
    if full is None or decoded not in (full, _reduced(full, max_side or max(full))):
        full = tuple(int(side) for side in read_image(image_path).shape[:2])  # header unknown: decode it
    if full != original:
        raise PairMismatchError(
            f"{image_path} is {full[1]}x{full[0]} but its mask {mask_path} is {original[1]}x{original[0]}"
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
            raise UserError(f"{path} is not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    matches = [Path(match) for match in glob.glob(str(path), recursive=recursive)]
    if not matches:
        raise FileNotFoundError(f"no such file, folder or matching pattern: {source}")
    return sorted(match for match in matches if match.is_file() and _has_extension(match, IMAGE_EXTENSIONS))


def split_alpha(image: np.ndarray | Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(H×W×3 uint8 RGB, H×W uint8 alpha or None) of an array (H×W, H×W×3, H×W×4) or a PIL image.

    A PIL image with transparency (RGBA, LA, a palette with a transparent entry) gives its alpha.
    """
    if type(image).__module__.startswith("PIL."):
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        image = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {image.dtype}")
    if image.ndim == 2 and min(image.shape) >= 1:
        return np.repeat(image[:, :, None], 3, axis=2), None
    if image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) >= 1:
        alpha = np.ascontiguousarray(image[:, :, 3]) if image.shape[2] == 4 else None
        return np.ascontiguousarray(image[:, :, :3]), alpha
    raise ValueError(f"expected an H×W×3 RGB or H×W×4 RGBA image array, got shape {image.shape}")
