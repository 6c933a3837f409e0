"""``pgnet-eval`` end to end: saved predictions never overwrite inputs, the evaluation roots that
datasets/README.md lays out, and the printed tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_pair

from pgnet.checkpoint import load_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.data.io import read_mask
from pgnet.writing import write_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> tuple[Path, dict]:
    """(checkpoint path, its state) of a tiny model without EMA weights: the shared one (conftest.py)."""
    return tiny_checkpoint, load_checkpoint(tiny_checkpoint)


def test_eval_save_preds_never_overwrites_ground_truth(tiny, tmp_path, capsys):
    gt, images = tmp_path / "sp" / "m" / "d", tmp_path / "images"
    for index in range(2):
        write_pair(images / f"a{index}.jpg", gt / f"a{index}.png", seed=index)
    before = {path: path.read_bytes() for path in gt.iterdir()}
    status = eval_main(["-c", str(tiny[0]), "--name", "m", "--gt", f"d={gt}", "--images", f"d={images}",
                        "--save-preds", str(tmp_path / "sp"), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "overwrite input files" in err and str(gt / "a0.png") in err
    assert {path: path.read_bytes() for path in gt.iterdir()} == before


def test_readme_evaluation_command_with_the_readme_layout(tmp_path, capsys):
    data, preds = tmp_path / "data", tmp_path / "preds"
    folders = {"DUTS-TE": ("DUTS/DUTS-TE/DUTS-TE-Image", "DUTS/DUTS-TE/DUTS-TE-Mask"),
               "HRSOD-TE": ("HRSOD/HRSOD_release/HRSOD_test", "HRSOD/HRSOD_release/HRSOD_test_mask"),
               "DAVIS-S": ("DAVIS-S/image", "DAVIS-S/mask")}
    for index, (name, (images, masks)) in enumerate(folders.items()):
        write_pair(data / images / "x.jpg", data / masks / "x.png", seed=index)
        write_image(preds / "m" / name / "x.png", read_mask(data / masks / "x.png"))
    os.chdir(tmp_path)
    assert eval_main(["--pred-root", "preds", "--datasets", "DUTS-TE", "HRSOD-TE", "--data-root", "data",
                      "-o", "results/cmp", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("DUTS-TE") == 2 and out.count("HRSOD-TE") == 2  # its own table, then the full one
    config = tmp_path / "dh.yaml"
    config.write_text("_base_: %s\ndata:\n  val:\n    - {name: HRSOD-TE, root: data/HRSOD}\n"
                      "    - {name: DAVIS-S, root: data/DAVIS-S}\n" % (REPO / "configs" / "pgnet_dh.yaml"))
    assert eval_main(["--pred-root", "preds", "--config", str(config), "-o", "results/cfg", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "HRSOD-TE" in out and "DAVIS-S" in out and "DUTS-TE" not in out


def test_eval_prints_a_single_dataset_table_once(tmp_path, capsys):
    write_pair(tmp_path / "image" / "x.jpg", tmp_path / "mask" / "x.png")
    write_image(tmp_path / "pred" / "x.png", read_mask(tmp_path / "mask" / "x.png"))
    assert eval_main(["--preds", f"m={tmp_path / 'pred'}", "--gt", f"d={tmp_path / 'mask'}",
                      "-o", str(tmp_path / "r"), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("MAE") == 1
