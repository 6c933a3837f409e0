"""``pgnet-eval`` end to end: saved predictions never overwrite inputs, the evaluation roots that
datasets/README.md lays out, and the printed tables."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from helpers import write_pair

import pgnet
from pgnet.checkpoint import load_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.config import load_config
from pgnet.data.io import read_mask
from pgnet.device import autocast
from pgnet.train.data_setup import TrainingData
from pgnet.train.distributed import DistInfo
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


def test_eval_config_scores_what_the_training_validates_on(tiny, tmp_path):
    """Built-in synthetic sets and a held-out split, as the trainer builds them (``TrainingData``), named
    with the trainer's labels, with the trainer's validation scores."""
    for index in range(4):
        write_pair(tmp_path / "mine" / "image" / f"p{index}.jpg", tmp_path / "mine" / "mask" / f"p{index}.png",
                   seed=index)
    config = tmp_path / "run.yaml"
    mine = tmp_path / "mine"
    config.write_text(
        f"_base_: {REPO / 'configs' / 'demo.yaml'}\ndata:\n  eval_size: 64\n  num_workers: 0\n"
        f"  train: [{{name: generic, root: {mine}, split: train, val_fraction: 0.5}}]\n"
        "  val:\n    - {name: synthetic, n: 2, size: 64, seed: 1}\n    - {name: synthetic, n: 1, size: 64, seed: 2}\n"
        f"    - {{name: generic, root: {mine}, split: val, val_fraction: 0.5}}\n")
    assert eval_main(["-c", str(tiny[0]), "--config", str(config), "-o", str(tmp_path / "out"), "--no-progress",
                      "--device", "cpu", "--no-optimize", "--num-workers", "0"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert list(results) == ["synthetic@seed1", "synthetic@seed2", "generic"]
    scored = {name: next(iter(methods.values())) for name, methods in results.items()}
    assert [scored[name]["images"] for name in results] == [2, 1, 2]  # the split: its held-out half only

    data = TrainingData(load_config(config).data, seed=0, micro_batch=1, dist=DistInfo(), logger=logging.getLogger())
    model = pgnet.load_model(tiny[0], device="cpu")
    device = torch.device("cpu")
    for name, validation in data.validation_sets():
        metrics, _ = validation.run(model, device, lambda: autocast(device, None))
        assert abs(metrics["MAE"] - scored[name]["metrics"]["MAE"]) <= 1e-6, name
        assert abs(metrics["Sm"] - scored[name]["metrics"]["Sm"]) <= 1e-6, name
