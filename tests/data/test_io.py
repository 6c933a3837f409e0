"""Reading images and masks: every odd or broken file either converts cleanly or fails naming itself."""

import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pgnet.data.io import (
    ImageReadError,
    binarize_mask,
    jpeg_frame_size,
    jpeg_reduction_factor,
    list_images,
    read_image,
    read_mask,
)


def write(path: Path, array: np.ndarray, *parameters: int) -> Path:
    """Encode ``array`` (OpenCV channel order) by the suffix of ``path``."""
    ok, encoded = cv2.imencode(path.suffix, array, list(parameters))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment carrying only the orientation tag after the JPEG's SOI marker."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count 1, value
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def write_palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    """A colour-type-3 (palette) PNG, written by hand since OpenCV cannot write one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = indices.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    rows = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", bytes(value for colour in palette for value in colour))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def test_read_image_returns_rgb(tmp_path):
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    image = read_image(write(tmp_path / "red.png", bgr))
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_grayscale_image_becomes_three_equal_channels(tmp_path, suffix):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    image = read_image(write(tmp_path / f"gray{suffix}", gray))
    assert image.shape == (16, 32, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_rgba_image_drops_alpha_and_keeps_colour(tmp_path):
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = np.arange(8, dtype=np.uint8)[None] * 30  # varying transparency
    image = read_image(write(tmp_path / "rgba.png", bgra))
    assert image.shape == (8, 8, 3)
    assert (image[..., 2] == 200).all() and (image[..., :2] == 0).all()


def test_16_bit_image_keeps_its_top_8_bits(tmp_path):
    values = np.array([0, 256, 32768, 65535], np.uint16)
    image16 = np.repeat(np.tile(values, (4, 1))[..., None], 3, axis=2)
    image = read_image(write(tmp_path / "deep.png", image16))
    assert image.dtype == np.uint8
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]


def test_palette_png_image_expands_to_its_colours(tmp_path):
    indices = np.array([[0, 1], [2, 1]])
    palette = [(10, 20, 30), (200, 100, 0), (0, 255, 0)]
    image = read_image(write_palette_png(tmp_path / "palette.png", indices, palette))
    assert image[0, 0].tolist() == [10, 20, 30]
    assert image[0, 1].tolist() == [200, 100, 0] and image[1, 0].tolist() == [0, 255, 0]


@pytest.mark.parametrize("max_side", [None, 32])
def test_exif_orientation_is_applied(tmp_path, max_side):
    stored = np.zeros((128, 256, 3), np.uint8)  # landscape as stored
    stored[:, :64] = 255  # a white band on the stored left edge
    _, encoded = cv2.imencode(".jpg", stored)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(with_exif_orientation(encoded.tobytes(), 6))  # 6: display rotated 90° clockwise
    image = read_image(path, max_side=max_side)
    expected_height = 256 if max_side is None else 256 // 4  # 128 / 4 = 32 is still >= max_side
    assert image.shape[:2] == (expected_height, expected_height // 2)  # now portrait
    quarter = image.shape[0] // 4
    assert image[: quarter - 2].mean() > 240  # the stored left edge is now the top
    assert image[-quarter:].mean() < 15


def test_reduced_jpeg_decode_never_goes_below_max_side(tmp_path):
    path = write(tmp_path / "big.jpg", textured(600, 1000))
    assert jpeg_frame_size(path.read_bytes()) == (600, 1000)
    assert read_image(path).shape == (600, 1000, 3)
    assert read_image(path, max_side=300).shape == (300, 500, 3)  # 600 / 2 = 300: exactly enough
    assert read_image(path, max_side=301).shape == (600, 1000, 3)  # 1/2 would be too small
    assert read_image(path, max_side=75).shape == (75, 125, 3)  # 1/8
    assert read_image(path, max_side=2000).shape == (600, 1000, 3)
    full = read_image(path).astype(np.float32)
    half = read_image(path, max_side=300).astype(np.float32)
    resized = cv2.resize(full, (500, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(half - resized).mean() < 4  # the same picture, only smaller


def test_reduction_factor_and_non_jpeg_files(tmp_path):
    assert jpeg_reduction_factor((2160, 3840), 1024) == 2
    assert jpeg_reduction_factor((4320, 7680), 1024) == 4
    assert jpeg_reduction_factor((1000, 1000), 1024) == 1
    png = write(tmp_path / "big.png", textured(600, 1000))
    assert jpeg_frame_size(png.read_bytes()) is None
    assert read_image(png, max_side=100).shape == (600, 1000, 3)  # only JPEGs decode reduced
    misnamed = tmp_path / "png_named.jpg"
    misnamed.write_bytes(png.read_bytes())
    assert read_image(misnamed, max_side=100).shape == (600, 1000, 3)


def broken_files(tmp_path: Path) -> dict[str, Path]:
    jpeg = write(tmp_path / "good.jpg", textured(64, 64)).read_bytes()
    png = write(tmp_path / "good.png", textured(64, 64)).read_bytes()
    files = {
        "truncated jpeg": (tmp_path / "truncated.jpg", jpeg[: len(jpeg) // 2]),
        "jpeg without end marker": (tmp_path / "no_eoi.jpg", jpeg[:-2]),
        "truncated png": (tmp_path / "truncated.png", png[: len(png) // 2]),
        "garbage": (tmp_path / "garbage.jpg", bytes(range(256)) * 8),
        "empty": (tmp_path / "empty.png", b""),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {kind: path for kind, (path, _) in files.items()}


def test_unreadable_files_raise_image_read_error_naming_the_file(tmp_path):
    for kind, path in [*broken_files(tmp_path).items(), ("missing", tmp_path / "missing.jpg")]:
        for reader in (read_image, read_mask):
            with pytest.raises(ImageReadError) as caught:
                reader(path)
            assert path.name in str(caught.value), kind
            assert caught.value.path == path
    with pytest.raises(ImageReadError):
        read_image(tmp_path)  # a folder


def test_image_read_error_is_os_and_value_error_and_pickles():
    error = ImageReadError("a/b.jpg", "cannot decode")
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.path == Path("a/b.jpg") and str(copy) == str(error)


def test_read_mask_converts_colour_alpha_and_16_bit(tmp_path):
    binary = np.zeros((16, 16), np.uint8)
    binary[4:12, 4:12] = 255
    as_bgr = np.repeat(binary[..., None], 3, axis=2)
    assert (read_mask(write(tmp_path / "rgb.png", as_bgr)) == binary).all()
    alpha_only = np.zeros((16, 16, 4), np.uint8)
    alpha_only[..., 3] = binary  # black colour, mask in the transparency
    assert (read_mask(write(tmp_path / "alpha.png", alpha_only)) == binary).all()
    rgba = np.concatenate([as_bgr, np.full((16, 16, 1), 255, np.uint8)], axis=2)  # opaque colour mask
    assert (read_mask(write(tmp_path / "rgba.png", rgba)) == binary).all()
    deep = binary.astype(np.uint16) * 257
    mask = read_mask(write(tmp_path / "deep.png", deep))
    assert mask.dtype == np.uint8 and (mask == binary).all()
    palette = read_mask(
        write_palette_png(tmp_path / "palette.png", (binary > 0).astype(np.uint8), [(0, 0, 0), (255, 255, 255)])
    )
    assert (palette == binary).all()


def test_jpeg_mask_noise_disappears_when_binarised(tmp_path):
    binary = np.zeros((128, 128), np.uint8)
    cv2.circle(binary, (60, 70), 40, 255, -1)
    cv2.rectangle(binary, (5, 5), (30, 100), 255, -1)
    mask = read_mask(write(tmp_path / "noisy.jpg", binary, cv2.IMWRITE_JPEG_QUALITY, 50))
    assert ((mask != 0) & (mask != 255)).any()  # JPEG made it noisy
    foreground = binarize_mask(mask)
    assert foreground.dtype == np.bool_
    assert (foreground == (binary > 0)).mean() > 0.995


def test_binarize_uses_the_evaluator_rule():
    assert binarize_mask(np.array([0, 128, 129, 255], np.uint8)).tolist() == [False, False, True, True]


def test_list_images_folder_file_glob(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt", ".hidden.jpg", "sub/d.jpeg"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.PNG", "b.jpg", "d.jpeg"]
    assert list_images(tmp_path / "b.jpg") == [tmp_path / "b.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "*.jpg"))] == ["b.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "**" / "*.jp*g"), recursive=True)] == ["b.jpg", "d.jpeg"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        list_images(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match=r"c\.txt"):
        list_images(tmp_path / "c.txt")
