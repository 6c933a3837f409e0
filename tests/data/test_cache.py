"""The resized on-disk cache never writes a copy over one of its sources."""

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


def test_cache_refuses_copies_over_its_sources(tmp_path):
    from pgnet.data.cache import build_cache, cache_dir_for

    root = tmp_path / "data"
    write_pair(root / "image" / "a.jpg", root / "mask" / "a.png", size=(80, 60))
    # A pair whose files sit where the first pair's cached copies go.
    cache = cache_dir_for(root, 32)
    write_pair(cache / "image" / "a.jpg.jpg", cache / "mask" / "a.png.png", size=(80, 60))
    before = (cache / "image" / "a.jpg.jpg").read_bytes()
    pairs = [(root / "image" / "a.jpg", root / "mask" / "a.png"),
             (cache / "image" / "a.jpg.jpg", cache / "mask" / "a.png.png")]
    with pytest.raises(OverwriteError, match=r"a\.jpg\.jpg \(from .*a\.jpg\)"):
        build_cache(root, pairs, 32)
    assert (cache / "image" / "a.jpg.jpg").read_bytes() == before
