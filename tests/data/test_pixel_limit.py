"""Bounded decoding: header sizes are read without decoding, and pictures over the pixel limit are
refused (reading) or skipped (datasets) undecoded."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import huge_png, write_pair

import pgnet
from pgnet import writing
from pgnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.cli.predict import main as predict_main
from pgnet.data.io import ImageTooLargeError, probe_image_size, read_image, read_mask, set_max_pixels
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
    write_image(tmp_path / "mask" / "b.png", np.zeros((8, 8), np.uint8))
    pairs = [(tmp_path / "image" / "a.jpg", tmp_path / "mask" / "a.png"),
             (tmp_path / "image" / "b.png", tmp_path / "mask" / "b.png")]
    dataset = SODDataset(pairs, build_eval_transform(SIZE), name="t")
    assert dataset[0] is not None and dataset[1] is None and dataset.skipped == 1
