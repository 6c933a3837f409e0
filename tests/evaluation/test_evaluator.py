"""The evaluator and ``pgnet-eval``: a tiny checkpoint on two small datasets, prediction folders side by
side, the mismatches (missing, resized, empty), incremental reports, and the trainer's validation."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pgnet
from pgnet.cli.eval import main as eval_main
from pgnet.data.io import read_image
from pgnet.data.synthetic import make_sample
from pgnet.evaluation import evaluator, scoring
from pgnet.evaluation.report import MethodResult, format_table
from pgnet.metrics import SOD_METRICS, SODMetrics
from pgnet.predict.predictor import Predictor

SIZE = 128
# name -> (image folder, mask folder, (height, width) of each sample), laid out as the registry expects
DATASETS = {
    "DUTS-TE": ("DUTS-TE/image", "DUTS-TE/mask", [(90, 120), (97, 115), (104, 110)]),
    "ECSSD": ("ECSSD/images", "ECSSD/ground_truth_mask", [(80, 64), (75, 101)]),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    """(data root, checkpoint, folder of the checkpoint's saved predictions, its report folder)."""
    base = tmp_path_factory.mktemp("eval")
    root = base / "data"
    for offset, (images, masks, sizes) in enumerate(DATASETS.values()):
        for index, size in enumerate(sizes):
            image, mask = make_sample(100 * offset + index, size)
            for folder, array in ((root / images, image[:, :, ::-1]), (root / masks, mask)):
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"im{index}.{'jpg' if folder.name in ('image', 'images') else 'png'}"), array)
    checkpoint = tiny_checkpoint  # the shared tiny trained model (conftest.py)
    code = eval_main(["-c", str(checkpoint), "--name", "tiny", "--datasets", *DATASETS, "--data-root", str(root),
                      "--size", str(SIZE), "--num-workers", "0", "--save-preds", str(base / "preds"),
                      "-o", str(base / "out"), "--no-progress", "--device", "cpu"])
    assert code == 0
    return root, checkpoint, base / "preds", base / "out"


def load_json(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_checkpoint_run_writes_tables_plots_and_predictions(setup):
    _, _, preds, out = setup
    results = load_json(out)["results"]
    assert set(results) == set(DATASETS)
    for dataset, (_, _, sizes) in DATASETS.items():
        entry = results[dataset]["tiny"]
        assert entry["images"] == len(sizes)
        assert set(entry["metrics"]) == {"MAE", "Sm", "adpEm", "meanEm", "maxEm", "adpFm", "meanFm", "maxFm",
                                         "wFm", "BIoU", "mBA"}
        assert all(0 <= value <= 1 for value in entry["metrics"].values())
        assert len(entry["curves"]["precision"]) == 256
        for index, size in enumerate(sizes):  # 8-bit PNGs at each mask's original size
            saved = cv2.imread(str(preds / "tiny" / dataset / f"im{index}.png"), cv2.IMREAD_UNCHANGED)
            assert saved.dtype == np.uint8 and saved.shape == size
        for kind in ("pr", "fm"):
            plot = cv2.imread(str(out / "plots" / f"{dataset}_{kind}.png"))
            assert plot is not None and plot.shape[0] > 100
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(row["dataset"], row["method"]) for row in rows] == [(name, "tiny") for name in DATASETS]
    assert float(rows[0]["maxFm"]) == results["DUTS-TE"]["tiny"]["metrics"]["maxFm"]
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("| Dataset | Method | Images | MAE |") and "| ECSSD | tiny | 2 |" in markdown


def test_saved_predictions_score_as_the_checkpoint_and_as_pysodmetrics(setup, tmp_path):
    """Scoring the saved PNGs gives the checkpoint's numbers exactly (predictions are scored as PNGs),
    and pysodmetrics agrees on them."""
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    root, _, preds, out = setup
    assert eval_main(["--pred-root", str(preds), "--datasets", *DATASETS, "--data-root", str(root),
                      "-o", str(tmp_path), "--no-progress", "--device", "cpu", "--workers", "2"]) == 0
    from_model, from_files = load_json(out)["results"], load_json(tmp_path)["results"]
    for dataset in DATASETS:
        for key, value in from_model[dataset]["tiny"]["metrics"].items():
            assert from_files[dataset]["tiny"]["metrics"][key] == pytest.approx(value, abs=1e-12), (dataset, key)

    masks = sorted((root / DATASETS["DUTS-TE"][1]).glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = py_sod_metrics.Fmeasure()
    sm, wfm = py_sod_metrics.Smeasure(), py_sod_metrics.WeightedFmeasure()
    for mask in masks:
        pred = cv2.imread(str(preds / "tiny" / "DUTS-TE" / mask.name), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        for metric in (fm, sm, wfm):
            metric.step(pred, gt)
    ours = from_files["DUTS-TE"]["tiny"]["metrics"]
    assert ours["maxFm"] == pytest.approx(fm.get_results()["fm"]["curve"].max(), abs=1e-6)
    assert ours["Sm"] == pytest.approx(sm.get_results()["sm"], abs=1e-6)
    assert ours["wFm"] == pytest.approx(wfm.get_results()["wfm"], abs=1e-6)


def copy_predictions(source: Path, target: Path, skip: str | None = None) -> None:
    for dataset_dir in source.iterdir():
        (target / dataset_dir.name).mkdir(parents=True)
        for file in dataset_dir.iterdir():
            if file.stem != skip:
                (target / dataset_dir.name / file.name).write_bytes(file.read_bytes())


def test_missing_predictions_stop_unless_allowed(setup, tmp_path, capsys):
    root, _, preds, _ = setup
    other = tmp_path / "other"
    copy_predictions(preds / "tiny", other, skip="im1")
    arguments = ["--preds", f"other={other}", "--datasets", *DATASETS, "--data-root", str(root), "--no-progress",
                 "--device", "cpu"]
    assert eval_main([*arguments, "-o", str(tmp_path / "stop")]) == 2
    error = capsys.readouterr().err
    assert "2 of 3 masks" not in error and "1 of 3 masks" in error and "im1" in error and "--allow-missing" in error
    assert not (tmp_path / "stop" / "results.json").exists()

    assert eval_main([*arguments, "-o", str(tmp_path / "rest"), "--allow-missing"]) == 0
    results = load_json(tmp_path / "rest")["results"]
    assert results["DUTS-TE"]["other"]["images"] == 2 and results["ECSSD"]["other"]["images"] == 1
    assert "im1" in results["DUTS-TE"]["other"]["notes"][0]


def test_predictions_of_another_size_are_resized_with_a_warning(setup, tmp_path, caplog):
    root, _, preds, _ = setup
    folder = tmp_path / "ECSSD"
    copy_predictions(preds / "tiny", tmp_path)
    small = cv2.resize(cv2.imread(str(folder / "im0.png"), cv2.IMREAD_GRAYSCALE), (30, 20))
    cv2.imwrite(str(folder / "im0.png"), small)
    mask_dir = root / DATASETS["ECSSD"][1]
    with caplog.at_level(logging.WARNING):
        report = evaluator.evaluate([evaluator.EvalDataset("ECSSD", mask_dir)], tmp_path / "out",
                                    prediction_dirs={"resized": folder}, device="cpu", progress=False, echo=None)
    assert "1 predictions differ in size" in caplog.text and "im0.png 30x20 -> 64x80" in caplog.text
    assert report.results[0].num_images == 2 and "resized" in report.results[0].notes[0]


def test_empty_or_missing_folders_are_errors_naming_the_path(setup, tmp_path, capsys):
    root, _, preds, _ = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    mask_dir = root / DATASETS["ECSSD"][1]
    assert eval_main(["--preds", f"m={empty}", "--gt", f"ECSSD={mask_dir}", "-o", str(tmp_path / "o")]) == 2
    assert f"prediction folder {empty} holds no image files" in capsys.readouterr().err
    assert eval_main(["--preds", f"m={preds / 'tiny'}", "--gt", f"ECSSD={empty}", "-o", str(tmp_path / "o")]) == 2
    assert f"mask folder {empty} holds no image files" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert eval_main(["--preds", f"m={missing}", "--datasets", *DATASETS, "--data-root", str(root),
                      "-o", str(tmp_path / "o")]) == 2
    assert f"{missing / 'DUTS-TE'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--gt", f"ECSSD={mask_dir}"])  # nothing to evaluate
    assert eval_main(["--preds", "no-equals-sign", "--gt", f"ECSSD={mask_dir}"]) == 2
    assert "--preds expects NAME=PATH" in capsys.readouterr().err


def test_finished_datasets_survive_a_crash(setup, tmp_path, monkeypatch):
    root, _, preds, _ = setup

    class CrashOnECSSD(SODMetrics):  # scoring ECSSD fails midway
        def update(self, pred, gt):
            if tuple(gt.shape[-2:]) in DATASETS["ECSSD"][2]:
                raise RuntimeError("disk on fire")
            return super().update(pred, gt)

    monkeypatch.setattr(evaluator, "SODMetrics", CrashOnECSSD)
    assert eval_main(["--pred-root", str(preds), "--datasets", *DATASETS, "--data-root", str(root),
                      "-o", str(tmp_path), "--no-progress", "--device", "cpu"]) == 1
    assert list(load_json(tmp_path)["results"]) == ["DUTS-TE"]
    assert (tmp_path / "plots" / "DUTS-TE_pr.png").exists() and not (tmp_path / "plots" / "ECSSD_pr.png").exists()


def test_trainer_validation_runs_the_evaluator(setup, monkeypatch):
    from pgnet.data.datasets import build_dataset
    from pgnet.data.transforms import build_eval_transform
    from pgnet.train.data_setup import Validation

    root, checkpoint, _, out = setup
    images, masks, _ = DATASETS["ECSSD"]
    dataset = build_dataset({"image_dir": root / images, "mask_dir": root / masks, "name": "ECSSD"},
                            build_eval_transform(SIZE))
    calls = []
    accumulate = scoring.accumulate_model
    monkeypatch.setattr(scoring, "accumulate_model", lambda *a, **k: calls.append(1) or accumulate(*a, **k))
    model = pgnet.load_model(checkpoint, "cpu")
    metrics, curves = Validation("ECSSD", dataset, num_workers=0).run(model, torch.device("cpu"), torch.no_grad)
    assert calls == [1]
    # pgnet-eval on the network as loaded scores exactly what the trainer's validation does ...
    plain = out.parent / "plain"
    assert eval_main(["-c", str(checkpoint), "--name", "tiny", "--datasets", "ECSSD", "--data-root", str(root),
                      "--size", str(SIZE), "--num-workers", "0", "-o", str(plain), "--no-progress", "--device", "cpu",
                      "--no-optimize"]) == 0
    assert load_json(plain)["meta"]["optimize"] is False
    assert metrics == pytest.approx(load_json(plain)["results"]["ECSSD"]["tiny"]["metrics"], abs=1e-12)
    # ... and on its optimised copy (folded BatchNorm, fused attention, channels_last, the default) nearly so.
    optimized = load_json(out)
    assert optimized["meta"]["optimize"] is True
    assert metrics == pytest.approx(optimized["results"]["ECSSD"]["tiny"]["metrics"], abs=1e-3)
    assert curves["precision"].shape == (256,)


def test_batches_and_flip_in_accumulate_model(setup):
    """A batch of two gives the one-by-one results (those of the checkpoint run); flip TTA differs."""
    from pgnet.data.datasets import build_dataset
    from pgnet.data.loader import build_eval_loader
    from pgnet.data.transforms import build_eval_transform

    root, checkpoint, _, out = setup
    images, masks, _ = DATASETS["ECSSD"]
    dataset = build_dataset({"image_dir": root / images, "mask_dir": root / masks}, build_eval_transform(SIZE))
    model = pgnet.load_model(checkpoint, "cpu")
    results = []
    for flip in (False, True):
        metrics = SODMetrics(SOD_METRICS)
        assert evaluator.accumulate_model(model, build_eval_loader(dataset, 2, 0), "cpu", metrics, flip=flip) == 2
        results.append(metrics.compute())
    expected = load_json(out)["results"]["ECSSD"]["tiny"]["metrics"]
    assert results[0] == pytest.approx({key: expected[key] for key in results[0]}, abs=1e-4)
    assert results[1]["MAE"] != pytest.approx(results[0]["MAE"], abs=1e-9)


def test_the_predictor_and_the_evaluator_share_the_prediction_step(setup, tmp_path, monkeypatch):
    """pgnet-eval scores, for each picture, the probabilities the Predictor gives it (one runtime, one
    prediction step), with flip TTA and the optimised network; only the float rounding of the two
    preprocessing implementations (the loader's ``build_eval_transform``, ``prepare_batch``) differs."""
    root, checkpoint, _, _ = setup
    images, masks, _ = DATASETS["ECSSD"]
    scored = []

    class Recording(SODMetrics):
        def update(self, pred, gt):
            scored.append(pred.clone())
            return super().update(pred, gt)

    monkeypatch.setattr(evaluator, "SODMetrics", Recording)
    method = evaluator.ModelMethod(checkpoint, size=SIZE, flip=True, num_workers=0)
    evaluator.evaluate([evaluator.EvalDataset("ECSSD", root / masks, root / images)], tmp_path, model_method=method,
                       metrics=["MAE"], device="cpu", progress=False, echo=None)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, flip=True)
    pictures = sorted((root / images).glob("*.jpg"))
    assert len(scored) == len(pictures) == 2
    for picture, probabilities in zip(pictures, scored):
        assert probabilities.shape == read_image(picture).shape[:2]
        np.testing.assert_allclose(probabilities.numpy(), predictor(picture), rtol=0, atol=1e-4)


def test_markdown_table_marks_the_best_method():
    results = [MethodResult("D", "a", {"MAE": 0.1, "maxFm": 0.8}, 3),
               MethodResult("D", "b", {"MAE": 0.2, "maxFm": 0.9}, 3)]
    table = format_table(results)
    assert "| D | a | 3 | **0.1000** | 0.8000 |" in table and "| D | b | 3 | 0.2000 | **0.9000** |" in table
    assert "**" not in format_table(results, markdown=False)
