"""``pgnet-predict``: what it tells the user while it works."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgnet.cli.predict import main as predict_main
from pgnet.writing import write_image

SIZE = 64


def test_compile_says_it_is_compiling(tmp_path, monkeypatch, capsys):
    from pgnet.predict import files as file_prediction
    from pgnet.predict import predictor as inference

    class Fake:
        batch_size, size = 1, SIZE

    monkeypatch.setattr(inference.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: Fake()))
    monkeypatch.setattr(file_prediction, "predict_files",
                        lambda *a, **k: file_prediction.PredictionReport([Path("x")]))
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert predict_main([str(tmp_path / "a.png"), "-c", "x.pth", "-o", str(tmp_path / "o"), "--compile"]) == 0
    assert "compiling (the first call of each size can take a minute)" in capsys.readouterr().err


def test_a_blur_that_is_not_a_finite_sigma_stops_before_any_work(tmp_path, capsys):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    for blur in ("inf", "nan", "0"):
        code = predict_main([str(tmp_path / "a.png"), "-c", str(tmp_path / "none.pth"), "-o", str(tmp_path / "o"),
                             "--mode", "blur", "--blur", blur])
        assert code == 2
        assert "blur must be a positive, finite sigma in pixels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
