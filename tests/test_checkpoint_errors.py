"""Every unusable checkpoint or weights file is one line naming the file, in the library and in
every command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pgnet
from pgnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.cli.predict import main as predict_main
from pgnet.data.synthetic import make_sample
from pgnet.writing import write_image


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> tuple[Path, dict]:
    """(checkpoint path, its state) of a tiny model without EMA weights: the shared one (conftest.py)."""
    return tiny_checkpoint, load_checkpoint(tiny_checkpoint)


def expect_checkpoint_error(path: Path, pattern: str, **kwargs) -> None:
    with pytest.raises(CheckpointError, match=pattern) as raised:
        pgnet.load_model(path, **kwargs)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


def test_every_bad_checkpoint_gives_one_line_naming_the_file(tiny, tmp_path):
    path, state = tiny
    (tmp_path / "zero.pth").write_bytes(b"")
    expect_checkpoint_error(tmp_path / "zero.pth", "empty file")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_checkpoint_error(tmp_path / "cut.pth", "truncated or corrupt")
    (tmp_path / "photo.pth").write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    expect_checkpoint_error(tmp_path / "photo.pth", "not a PyTorch file, it is a JPEG image")
    for missing in ("model_config",):
        broken = {k: v for k, v in state.items() if k != missing}
        expect_checkpoint_error(save_checkpoint(broken, tmp_path / "no_config.pth"), "missing field model_config")
    typed = {**state, "model_config": {**state["model_config"], "width": "64", "graft_points": "r5-s2"}}
    expect_checkpoint_error(save_checkpoint(typed, tmp_path / "typed.pth"),
                            r"typed\.pth: model_config\.width: expected an integer, got '64'; "
                            r"model_config\.graft_points: expected a list, got 'r5-s2'$")
    expect_checkpoint_error(path, r"no 'ema' weights \(it has: model\)", weights="ema")
    shaped = {**state, "model": {**state["model"], "head_pred.weight": torch.zeros(3, 3)}}
    expect_checkpoint_error(save_checkpoint(shaped, tmp_path / "shaped.pth"),
                            r"wrong shapes: head_pred\.weight \(file \(3, 3\), model")


def test_resume_conversion_and_backbone_errors_are_one_line(tiny, tmp_path, capsys):
    from pgnet.checkpoint import require_fields
    from pgnet.cli.convert import main as convert_main
    from pgnet.models.backbones import read_state_dict

    path, state = tiny
    with pytest.raises(CheckpointError, match=r"last\.pth: missing field rng \(it has: "):
        require_fields(state, "runs/x/last.pth", ("model", "rng"))
    assert convert_main([str(path), str(tmp_path / "again.pth")]) == 2  # a bad source: a usage error
    assert "already a pgnet checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "again.pth").exists()
    (tmp_path / "swin.pth").write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"pretrained weights .*swin\.pth: truncated or corrupt"):
        read_state_dict(tmp_path / "swin.pth")


def test_commands_print_checkpoint_errors_without_a_traceback(tiny, tmp_path, capsys):
    from pgnet.cli.export import main as export_main

    path, state = tiny
    shaped = save_checkpoint({**state, "model": {**state["model"], "head_pred.weight": torch.zeros(3, 3)}},
                             tmp_path / "shaped.pth")
    assert export_main([str(shaped), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and "wrong shapes" in err and "Traceback" not in err
    write_image(tmp_path / "in" / "a.png", make_sample(0, (32, 32))[0])
    for command in (predict_main, eval_main):
        args = ([str(tmp_path / "in"), "-o", str(tmp_path / "o")] if command is predict_main else
                ["--gt", f"d={tmp_path / 'in'}", "--images", f"d={tmp_path / 'in'}", "-o", str(tmp_path / "r")])
        assert command([*args, "-c", str(path), "--weights", "ema", "--no-progress"]) == 2
        assert "no 'ema' weights (it has: model)" in capsys.readouterr().err


def test_load_checkpoint_still_reads_plain_files(tmp_path):
    assert load_checkpoint(save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.pth"))["a"].sum() == 2
