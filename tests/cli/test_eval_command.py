"""``pgnet-eval`` end to end: saved predictions never overwrite inputs, the evaluation roots that
datasets/README.md lays out, and the printed tables."""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_pair

import pgnet
from pgnet.checkpoint import load_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.config import load_config
from pgnet.data.io import read_mask
from pgnet.device import autocast
from pgnet.distributed import DistInfo
from pgnet.evaluation.evaluator import resolve_datasets
from pgnet.metrics import ALL_METRICS
from pgnet.train.data_setup import TrainingData
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


def test_dis5k_sets_get_hce_by_default_and_dis_te_reads_its_parts(tmp_path, capsys):
    """DIS5K as released: HCE is added on DIS sets (not elsewhere), DIS-TE scores DIS-TE1..4 together,
    its predictions read from the parts' folders; --metrics without HCE leaves it out."""
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    data, preds = tmp_path / "data", tmp_path / "preds"
    release = data / "DIS5K"
    expected_hce = py_sod_metrics.HumanCorrectionEffortMeasure()
    for index, name in enumerate(("DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")):
        for copy in range(2):
            stem = f"{name}#{copy}"
            write_pair(release / name / "im" / f"{stem}.jpg", release / name / "gt" / f"{stem}.png",
                       size=(56, 72), seed=10 * index + copy)
            mask = read_mask(release / name / "gt" / f"{stem}.png")
            pred = np.roll(mask, 2 + copy, axis=1)  # misses and extra pixels: a non-zero HCE
            write_image(preds / "m" / name / f"{stem}.png", pred)
            if name != "DIS-VD":
                expected_hce.step(pred, mask)
    write_pair(data / "DAVIS-S" / "image" / "x.jpg", data / "DAVIS-S" / "mask" / "x.png")
    write_image(preds / "m" / "DAVIS-S" / "x.png", read_mask(data / "DAVIS-S" / "mask" / "x.png"))
    out = tmp_path / "out"
    assert eval_main(["--pred-root", str(preds), "--datasets", "DIS-VD", "DIS-TE", "DAVIS-S", "--data-root",
                      str(data), "-o", str(out), "--no-progress", "--device", "cpu", "--no-plots"]) == 0
    assert not (out / "plots").exists()
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["DIS-TE"]["m"]["images"] == 8 and results["DIS-VD"]["m"]["images"] == 2
    assert results["DIS-TE"]["m"]["metrics"]["HCE"] == pytest.approx(float(expected_hce.get_results()["hce"]))
    assert results["DIS-TE"]["m"]["metrics"]["HCE"] > 0 and "HCE" in results["DIS-VD"]["m"]["metrics"]
    assert "HCE" not in results["DAVIS-S"]["m"]["metrics"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["HCE"] == "" for row in rows] == [False, False, True]  # empty, never zero
    assert "HCE as IS-Net/pysodmetrics" in (out / "results.md").read_text()
    metrics = json.loads((out / "results.json").read_text())["meta"]["metrics"]
    assert metrics["DIS-TE"][-1] == "HCE" and "HCE" not in metrics["DAVIS-S"]
    dis_te = resolve_datasets(["DIS-TE"], data)[0]
    assert dis_te.default_metrics == (*ALL_METRICS, "HCE") and dis_te.part_names == [f"DIS-TE{i}" for i in range(1, 5)]
    capsys.readouterr()


def test_references_and_every_format_from_the_command_line(tmp_path, capsys):
    data, preds = tmp_path / "data", tmp_path / "preds"
    for index, (name, images, masks) in enumerate((("DAVIS-S", "DAVIS-S/image", "DAVIS-S/mask"),
                                                   ("DUTS-TE", "DUTS/DUTS-TE/DUTS-TE-Image",
                                                    "DUTS/DUTS-TE/DUTS-TE-Mask"))):
        for copy in range(2):
            write_pair(data / images / f"x{copy}.jpg", data / masks / f"x{copy}.png", seed=index * 10 + copy)
            mask = read_mask(data / masks / f"x{copy}.png")
            for method, shift in (("a_1", 1), ("b#2", 4)):
                write_image(preds / method / name / f"x{copy}.png", np.roll(mask, shift, axis=0))
    mine = tmp_path / "mine.yaml"
    mine.write_text("references:\n  mine:\n    method: Mine\n    source: my notes\n"
                    "    scores:\n      DAVIS-S: {MAE: 0.05}\n")
    out = tmp_path / "out"
    assert eval_main(["--pred-root", str(preds), "--datasets", "DAVIS-S", "DUTS-TE", "--data-root", str(data),
                      "--reference", "pgnet-dh", str(mine), "-o", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "PGNet (DH) published" in printed and "Δ a_1 vs pgnet-dh" in printed
    assert {path.name for path in out.iterdir()} == {"results.md", "results.csv", "results.json", "results.tex",
                                                     "results.xlsx", "plots"}
    assert sorted(path.name for path in (out / "plots").iterdir()) == sorted(
        f"{dataset}_{kind}.png" for dataset in ("DAVIS-S", "DUTS-TE") for kind in ("em", "fm", "pr"))
    rows = list(csv.DictReader((out / "results.csv").open()))
    kinds = [(row["dataset"], row["kind"], row["method"]) for row in rows]
    assert kinds[:5] == [("DAVIS-S", "method", "a_1"), ("DAVIS-S", "method", "b#2"),
                         ("DAVIS-S", "reference", "PGNet (DH) published"), ("DAVIS-S", "reference", "Mine"),
                         ("DAVIS-S", "delta", "Δ a_1 vs pgnet-dh")]
    delta = next(row for row in rows if row["dataset"] == "DUTS-TE" and row["kind"] == "delta")
    ours = next(row for row in rows if row["dataset"] == "DUTS-TE" and row["method"] == "a_1")
    assert float(delta["Sm"]) == pytest.approx(float(ours["Sm"]) - 0.912, abs=1e-12)
    assert delta["mBA"] == ""  # pgnet-dh publishes no mBA on DUTS-TE
    tex = (out / "results.tex").read_text()
    assert "a\\_1" in tex and "b\\#2" in tex and "\\multicolumn{4}{c}{DAVIS-S (2)}" in tex
    assert eval_main(["--pred-root", str(preds), "--datasets", "DAVIS-S", "--data-root", str(data), "--reference",
                      "pgnet-zz", "-o", str(out), "--no-progress"]) == 2
    assert "unknown reference 'pgnet-zz'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("references:\n  mine: {method: M, source: S, scores: {DAVIS-S: {F: 1}}}\n")
    assert eval_main(["--pred-root", str(preds), "--datasets", "DAVIS-S", "--data-root", str(data), "--reference",
                      str(bad), "-o", str(out), "--no-progress"]) == 2
    assert f"{bad}: references.mine.scores.DAVIS-S.F: unknown metric" in capsys.readouterr().err


def readme_reproduction_command() -> list[str]:
    """The one reproduction command of the README's evaluation section, as arguments."""
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("pgnet-eval -c CKPT --datasets DAVIS-S"))
    return shlex.split(line)[1:]


def test_the_readme_reproduction_command_gives_the_paper_table(tiny, tmp_path, capsys):
    arguments = readme_reproduction_command()
    assert arguments == ["-c", "CKPT", "--datasets", "DAVIS-S", "HRSOD-TE", "UHRSD-TE", "DUTS-TE", "--data-root",
                         "data", "--reference", "pgnet-uh", "-o", "results/uh"]
    folders = {"DAVIS-S": ("DAVIS-S/image", "DAVIS-S/mask"),
               "HRSOD-TE": ("HRSOD/HRSOD_release/HRSOD_test", "HRSOD/HRSOD_release/HRSOD_test_mask"),
               "UHRSD-TE": ("UHRSD/UHRSD_TE/image", "UHRSD/UHRSD_TE/mask"),
               "DUTS-TE": ("DUTS/DUTS-TE/DUTS-TE-Image", "DUTS/DUTS-TE/DUTS-TE-Mask")}
    for index, (images, masks) in enumerate(folders.values()):
        write_pair(tmp_path / "data" / images / "x.jpg", tmp_path / "data" / masks / "x.png", seed=index)
    os.chdir(tmp_path)
    arguments[arguments.index("CKPT")] = str(tiny[0])
    assert eval_main([*arguments, "--size", "64", "--no-progress", "--device", "cpu", "--num-workers", "0",
                      "--no-plots"]) == 0
    capsys.readouterr()
    out = tmp_path / "results" / "uh"
    tex = (out / "results.tex").read_text()
    header = next(line for line in tex.splitlines() if line.startswith("Method &"))
    assert header.count("MAE$\\downarrow$") == 4 and header.count("mBA$\\uparrow$") == 4  # the paper's columns
    assert "PGNet (UH) published & \\pgnet" in tex and "0.954" in tex
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["kind"] for row in rows if row["dataset"] == "UHRSD-TE"] == ["method", "reference", "delta"]
    assert "1 images" not in (out / "results.md").read_text() and "64×64" in (out / "results.md").read_text()


def test_readme_shows_a_rendered_table_and_the_three_curve_kinds():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Reproducing a paper's table", 1)[1].split("\n## ", 1)[0]
    assert "| Dataset | Method | Images | MAE | Sm |" in section
    assert "| synthetic | Baseline (paper) |  | 0.040 | 0.900 |" in section
    assert "| synthetic | Δ blur-1 vs baseline |" in section
    for kind in ("pr", "fm", "em"):
        picture = REPO / "docs" / "images" / f"eval_{kind}.png"
        assert f'src="docs/images/eval_{kind}.png"' in section
        assert picture.stat().st_size < 150 * 1024
    assert (REPO / "docs" / "make_evaluation_images.py").is_file()
