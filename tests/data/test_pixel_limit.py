"""Bounded decoding: header sizes are read without decoding, and pictures over the pixel limit are
refused (reading) or skipped (datasets) undecoded."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import huge_hdr, huge_png, write_pair

import pgnet
from pgnet import writing
from pgnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.cli.predict import main as predict_main
from pgnet.data.io import (
    ImageReadError,
    ImageTooLargeError,
    picture_format,
    probe_image_size,
    read_image,
    read_image_with_alpha,
    read_mask,
    set_max_pixels,
)
from pgnet.data.registry import known_dataset_names
from pgnet.data.synthetic import make_sample
from pgnet.predict.files import predict_files
from pgnet.predict.output_plan import plan_outputs
from pgnet.predict.predictor import Predictor
from pgnet.writing import NoSpaceError, OverwriteError, check_overwrites, write_image

SIZE = 64


@pytest.fixture
def limit():
    yield set_max_pixels
    os.environ.pop("PGNET_MAX_PIXELS", None)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_header_sizes_match_the_decoded_sizes(tmp_path, suffix):
    path = write_image(tmp_path / f"p{suffix}", make_sample(1, (37, 53))[0])
    assert probe_image_size(path) == read_image(path).shape[:2] == (37, 53)


# Every format this OpenCV decodes besides the five above, as cv2.imencode writes it (OpenEXR only
# decodes with OPENCV_IO_ENABLE_OPENEXR, so its probe is checked on a hand-made header below).
OTHER_FORMATS = {".gif": "GIF", ".hdr": "Radiance HDR", ".ppm": "PBM/PGM/PPM", ".pgm": "PBM/PGM/PPM",
                 ".pfm": "PFM", ".pam": "PAM", ".ras": "Sun raster", ".jp2": "JPEG 2000", ".avif": "AVIF"}


@pytest.mark.parametrize("suffix", sorted(OTHER_FORMATS))
def test_every_format_opencv_decodes_is_sized_from_its_header(suffix):
    picture = make_sample(1, (37, 53))[0]
    picture = picture[:, :, 0] if suffix == ".pgm" else picture.astype(np.float32) / 255 if suffix in (
        ".hdr", ".pfm") else picture
    data = cv2.imencode(suffix, picture)[1]
    assert picture_format(data) == OTHER_FORMATS[suffix]
    assert probe_image_size(data) == cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2] == (37, 53)


def _openexr(height: int, width: int) -> bytes:
    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    attribute = b"dataWindow\0box2i\0" + struct.pack("<i", 16) + window
    return b"\x76\x2f\x31\x01\x02\x00\x00\x00" + b"compression\0compression\0\x01\x00\x00\x00\x00" + attribute + b"\0"


def _sun_raster(height: int, width: int) -> bytes:
    return b"\x59\xa6\x6a\x95" + struct.pack(">7i", width, height, 24, width * height * 3, 1, 0, 0) + bytes(64)


def _portable_pixmap(height: int, width: int) -> bytes:
    return b"P6\n# a comment\n%d %d\n255\n" % (width, height) + bytes(64)


def _big_tiff(height: int, width: int) -> bytes:
    entries = b"".join(struct.pack("<HHQQ", tag, 4, 1, value) for tag, value in ((256, width), (257, height)))
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries + bytes(64)


HUGE = {"Radiance HDR": lambda path: huge_hdr(path),
        "TIFF": lambda path: path.write_bytes(_big_tiff(12000, 12000)),  # a BigTIFF
        "Sun raster": lambda path: path.write_bytes(_sun_raster(12000, 12000)),
        "PBM/PGM/PPM": lambda path: path.write_bytes(_portable_pixmap(12000, 12000)),
        "OpenEXR": lambda path: path.write_bytes(_openexr(12000, 12000))}


@pytest.mark.parametrize("kind", sorted(HUGE))
def test_a_huge_picture_of_any_format_and_name_is_refused_before_decoding(tmp_path, monkeypatch, kind):
    """A 144-megapixel Radiance HDR named huge.png (and the like) is sized by its content, not its
    name, and refused by every reader before OpenCV decodes a pixel."""
    path = tmp_path / "huge.png"
    HUGE[kind](path)
    assert picture_format(path) == kind and probe_image_size(path) == (12000, 12000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a picture over the limit"))
    for reader in (read_image, read_mask, read_image_with_alpha):
        with pytest.raises(ImageTooLargeError, match=rf"huge\.png: 12000x12000 pixels \(144 MP\) is over the pixel limit of 100 MP \({kind} by its content\)"):
            reader(path)


def test_content_whose_size_no_header_gives_is_not_decoded(tmp_path, monkeypatch, limit):
    garbage = tmp_path / "a.jpg"
    garbage.write_bytes(b"not a picture at all, whatever its name")
    avif = tmp_path / "b.png"  # an AVIF without its image extents
    avif.write_bytes(b"\x00\x00\x00\x14ftypavif\x00\x00\x00\x00avif" + bytes(32))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a picture of unknown size"))
    with pytest.raises(ImageReadError, match=r"a\.jpg: not a picture format"):
        read_image(garbage)
    with pytest.raises(ImageReadError, match=r"b\.png: AVIF file whose size cannot be read from its header"):
        read_mask(avif)
    monkeypatch.undo()
    limit(0)  # no limit: OpenCV has its say
    with pytest.raises(ImageReadError, match=r"a\.jpg: cannot decode image"):
        read_image(garbage)


def test_pictures_over_the_pixel_limit_are_skipped_undecoded(tmp_path, monkeypatch, limit):
    big = huge_png(tmp_path / "big.png")
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a picture over the limit"))
    with pytest.raises(ImageTooLargeError, match=r"big\.png: 20000x20000 pixels \(400 MP\) is over the pixel limit"):
        read_image(big)
    with pytest.raises(ImageTooLargeError, match=r"big\.png"):
        read_mask(big)
    monkeypatch.undo()
    small = write_image(tmp_path / "small.png", np.zeros((40, 30), np.uint8))
    limit(1000)
    with pytest.raises(ImageTooLargeError, match=r"30x40 pixels"):
        read_mask(small)
    limit(0)  # no limit
    assert read_mask(small).shape == (40, 30)


def test_training_dataset_skips_a_huge_picture(tmp_path):
    from pgnet.data.datasets import SODDataset
    from pgnet.data.transforms import build_eval_transform

    write_pair(tmp_path / "image" / "a.jpg", tmp_path / "mask" / "a.png")
    huge_png(tmp_path / "image" / "b.png")
    huge_hdr(tmp_path / "image" / "c.png")  # a Radiance HDR by content
    for name in ("b", "c"):
        write_image(tmp_path / "mask" / f"{name}.png", np.zeros((8, 8), np.uint8))
    pairs = [(tmp_path / "image" / f"{name}", tmp_path / "mask" / f"{Path(name).stem}.png")
             for name in ("a.jpg", "b.png", "c.png")]
    dataset = SODDataset(pairs, build_eval_transform(SIZE), name="t")
    assert dataset[0] is not None and dataset[1] is None and dataset[2] is None and dataset.skipped == 2
