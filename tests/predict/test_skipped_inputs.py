"""Inputs that cannot be read are skipped with a message naming them, and the rest is predicted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import huge_hdr, huge_png

from pgnet.checkpoint import load_checkpoint
from pgnet.data.synthetic import make_sample
from pgnet.predict.files import predict_files
from pgnet.predict.output_plan import plan_outputs
from pgnet.predict.predictor import Predictor
from pgnet.writing import write_image

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> tuple[Path, dict]:
    """(checkpoint path, its state) of a tiny model without EMA weights: the shared one (conftest.py)."""
    return tiny_checkpoint, load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def predictor(tiny) -> Predictor:
    return Predictor.from_checkpoint(tiny[0], device="cpu", size=SIZE, optimize=False)


def test_predict_files_skips_a_huge_picture_and_writes_the_rest(predictor, tmp_path):
    (tmp_path / "in").mkdir()
    huge_png(tmp_path / "in" / "big.png")
    huge_hdr(tmp_path / "in" / "huge.png")  # a 144 MP Radiance HDR by content
    write_image(tmp_path / "in" / "ok.jpg", make_sample(2, (50, 70))[0])
    lines = []
    report = predict_files(predictor, plan_outputs([tmp_path / "in"], tmp_path / "out"), progress=False,
                           log=lines.append, workers=1)
    assert [path.name for path in report.written] == ["ok.png"]
    assert len(lines) == 2 and "big.png" in lines[0] and "20000x20000" in lines[0]
    assert "huge.png" in lines[1] and "12000x12000" in lines[1] and "Radiance HDR" in lines[1]


def test_an_unreadable_path_in_a_list_gives_none_and_a_warning(predictor, tmp_path):
    good = write_image(tmp_path / "good.png", make_sample(0, (30, 40))[0])
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = predictor([good, tmp_path / "bad.jpg", good])
    assert masks[1] is None and masks[0].shape == (30, 40) and np.array_equal(masks[0], masks[2])
    assert any("bad.jpg" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        predictor(tmp_path / "bad.jpg")
