"""int8 on the CPU: the ResNet branch through oneDNN's int8 convolutions, its calibration (made,
saved, read back, refused when bad), the predictor's "int8" and "auto" choices, and ``pgnet-calibrate``."""

import copy
import json

import cv2
import numpy as np
import pytest
import torch

from pgnet.benchmark import SMALL_MODEL, build_benchmark_model
from pgnet.benchmark.precision import measure_precision_scores
from pgnet.checkpoint import load_model
from pgnet.cli.calibrate import main as calibrate_main
from pgnet.data.preprocessing import Preprocessing, prepare_batch
from pgnet.device import CPU_BF16_VARIABLE, PrecisionError, resolve_precision
from pgnet.models.pgnet import create_model
from pgnet.predict.acceleration import LowPrecisionNetwork, prepare_for_inference
from pgnet.predict.calibration import calibrate_pictures
from pgnet.predict.export import export_package
from pgnet.predict.int8 import (
    Int8Calibration,
    Int8CalibrationError,
    Int8FusionBlock,
    Int8ResNet,
    calibrate,
    calibration_names,
    input_range,
    int8_available,
    int8_modules,
)
from pgnet.predict.predictor import Predictor

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch has no oneDNN int8 kernels")

PICTURES = [np.random.default_rng(seed).integers(0, 256, (72, 88, 3), dtype=np.uint8) for seed in range(3)]


@pytest.fixture(scope="module")
def model():
    # BatchNorm statistics calibrated: activations at a trained network's scale.
    return build_benchmark_model(SMALL_MODEL)


@pytest.fixture(scope="module")
def calibration(model):
    calibration = calibrate_pictures(model, PICTURES, 64)
    calibration.check = {"auto_rule": True}
    return calibration


def test_int8_modules_follow_the_float32_network(model, calibration):
    prepared = prepare_for_inference(model)  # float32, BatchNorm folded
    image_range = input_range(Preprocessing().mean, Preprocessing().std)
    int8 = Int8ResNet(prepared.resnet, calibration.ranges, image_range, torch.float32)
    block = Int8FusionBlock(prepared.decoder.cnn2_block, calibration.ranges, output_dtype=torch.float32)
    image = prepare_batch([PICTURES[1]], 64, Preprocessing(), False, torch.device("cpu"))  # as calibrated
    with torch.inference_mode():
        expected = prepared.resnet(image)
        outputs = int8(image)
        top = torch.relu(torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(2)))
        expected_block = prepared.decoder.cnn2_block(expected[0], top)
        output_block = block(expected[0], top)
    assert [o.shape for o in outputs] == [e.shape for e in expected]
    for output, reference in [*zip(outputs, expected), (output_block, expected_block)]:
        assert output.dtype == torch.float32
        relative = ((output - reference).abs().mean() / reference.abs().mean()).item()
        assert 0 < relative < 0.08, relative  # quantised (not the float path), and close to it


def test_calibration_records_each_activations_range(model):
    prepared = prepare_for_inference(model)
    images = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    calibration = calibrate(prepared, images, 64)
    assert set(calibration.ranges) == set(calibration_names(prepared)) and calibration.pictures == 2
    resnet = prepared.resnet
    with torch.inference_mode():
        stems = [resnet.act1(resnet.conv1(image)).max().item() for image in images]
        r5 = [resnet(image)[3].max().item() for image in images]
    assert calibration.ranges["stem"] == pytest.approx(max(stems))
    assert calibration.ranges["layer4.1.out"] == pytest.approx(max(r5))
    assert "layer2.0.downsample" in calibration.ranges and "layer1.0.downsample" not in calibration.ranges
    low, high = calibration.ranges["decoder.cnn2_block.merged"]
    assert low < 0 < high


def test_calibration_file_round_trip_and_bad_files(calibration, tmp_path):
    path = tmp_path / "int8.json"
    calibration.save(path)
    again = Int8Calibration.load(path)
    assert again.ranges == calibration.ranges and again.check == {"auto_rule": True} and again.size == 64
    with pytest.raises(Int8CalibrationError, match="not found"):
        Int8Calibration.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(Int8CalibrationError, match=r"bad\.json"):
        Int8Calibration.load(bad)
    values = calibration.to_dict()
    for edit, message in ((("format", "other"), "not a pgnet int8 calibration"),
                          (("version", 9), "version 9"),
                          (("ranges", {**values["ranges"], "stem": -1.0}), r"ranges\.stem must be a finite number"),
                          (("ranges", {**values["ranges"], "layer9.0.out": 1.0}), "unknown activation 'layer9.0.out'"),
                          (("ranges", {**values["ranges"], "decoder.cnn2_block.input": 3.0}),
                           r"decoder\.cnn2_block\.input must be \[low ≤ 0, high ≥ 0\]")):
        bad.write_text(json.dumps({**values, edit[0]: edit[1]}))
        with pytest.raises(Int8CalibrationError, match=message):
            Int8Calibration.load(bad)


def test_a_calibration_of_another_resnet_is_refused(calibration):
    network = prepare_for_inference(create_model(**{**SMALL_MODEL, "resnet": "resnet34"}).eval())
    with pytest.raises(Int8CalibrationError, match=r"does not fit this network \(ResNet resnet34\)"):
        int8_modules(network, calibration, (-2.0, 2.0))


def test_predictor_int8_and_auto(model, calibration, monkeypatch):
    """int8 needs a calibration; with one it runs the bfloat16 copy with an int8 ResNet, close to
    float32. ``auto`` takes it only where bfloat16 is native and the calibration's check held; on a
    CPU without native bfloat16 it stays float32 (to 1e-4 of the plain model)."""
    picture = PICTURES[0]
    expected = Predictor(model, size=64, device="cpu", optimize=False, precision="fp32")(picture)
    with pytest.raises(Int8CalibrationError, match="needs a calibration"):
        Predictor(model, size=64, device="cpu", precision="int8")
    int8 = Predictor(model, size=64, device="cpu", precision="int8", calibration=calibration)
    assert int8.precision == "int8" and isinstance(int8.network, LowPrecisionNetwork)
    assert isinstance(int8.network.model.resnet, Int8ResNet)
    assert isinstance(int8.network.model.decoder.cnn2_block, Int8FusionBlock)
    mask = int8(picture)
    assert mask.dtype == np.float32 and mask.shape == picture.shape[:2]
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():  # a copy shares the read-only prepacked weights
        assert torch.equal(copy.deepcopy(int8.network)(image).pred, int8.network(image).pred)
    error = np.abs(mask - expected).mean()
    assert 0 < error < 0.05  # a random network at 64 px: bfloat16 alone is 6e-3 away; the demo model, docs
    coarse = Int8Calibration({name: [20 * v for v in value] if isinstance(value, list) else 20 * value
                              for name, value in calibration.ranges.items()}, 3, 64)
    coarse_mask = Predictor(model, size=64, device="cpu", precision="int8", calibration=coarse)(picture)
    assert np.abs(coarse_mask - expected).mean() > 2 * error  # the calibrated scales are what it runs with

    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    assert Predictor(model, size=64, device="cpu", calibration=calibration).precision == "int8"
    failed = Int8Calibration(calibration.ranges, calibration.pictures, calibration.size, {"auto_rule": False})
    assert Predictor(model, size=64, device="cpu", calibration=failed).precision == "bf16"
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    without = Predictor(model, size=64, device="cpu", calibration=calibration)
    assert without.precision == "fp32"
    assert np.abs(without(picture) - expected).max() <= 1e-4


def test_int8_is_for_inference_on_a_cpu():
    with pytest.raises(PrecisionError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda"), inference=True)
    with pytest.raises(PrecisionError, match=r"train\.amp must be one of"):
        resolve_precision("int8", torch.device("cpu"), key="train.amp")


def test_scores_without_masks_compare_probabilities_only(model, calibration):
    results = measure_precision_scores(model, [(p, None) for p in PICTURES[:2]], ("int8",), 64,
                                       calibration=calibration)
    assert results["int8"]["resolved"] == "int8" and results["int8"]["auto_rule"] is False
    assert "Sm" not in results["int8"] and "delta_Sm" not in results["int8"]
    assert 0 < results["int8"]["mean_abs_diff_probability"] < 0.05


def test_calibrate_command_writes_a_checked_calibration(tiny_checkpoint, tmp_path, capsys):
    images, masks = tmp_path / "image", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    for index, picture in enumerate(PICTURES):
        cv2.imwrite(str(images / f"p{index}.jpg"), picture[:, :, ::-1])
        mask = np.zeros(picture.shape[:2], np.uint8)
        mask[20:50, 30:60] = 255
        cv2.imwrite(str(masks / f"p{index}.png"), mask)
    (images / "broken.jpg").write_bytes(b"not a picture")
    cv2.imwrite(str(masks / "broken.png"), mask)
    cv2.imwrite(str(images / "lonely.jpg"), PICTURES[0])
    output = tmp_path / "int8.json"
    arguments = ["--checkpoint", str(tiny_checkpoint), "--images", str(images), "--masks", str(masks),
                 "--size", "64", "-o", str(output)]
    status = calibrate_main(arguments)
    captured = capsys.readouterr()
    assert status in (0, 1) and output.is_file()
    assert "broken.jpg" in captured.err and "no mask named lonely.*" in captured.err
    calibration = Int8Calibration.load(output)
    assert calibration.pictures == 3 and calibration.size == 64
    assert calibration.check["masks"] is True and calibration.check["held_out"] is False
    assert (status == 0) == calibration.check["auto_rule"]
    assert {"delta_Sm", "delta_MAE", "mean_abs_diff_probability"} <= set(calibration.check)
    before = output.read_bytes()
    assert calibrate_main(arguments) == 2  # an existing output is kept
    assert "exists" in capsys.readouterr().err and output.read_bytes() == before


def test_a_package_ships_its_calibration(tiny_checkpoint, tmp_path, monkeypatch):
    """``export_package(calibration=...)`` writes it into the package, whose predictor and evaluation
    then use it; exporting again without one removes it; one made for another ResNet is refused."""
    model = load_model(tiny_checkpoint, "cpu")
    calibration = calibrate_pictures(model, PICTURES[:2], 64)
    calibration.check = {"auto_rule": True, "mean_abs_diff_probability": 1e-3}
    calibration.save(tmp_path / "int8.json")
    package = export_package(tiny_checkpoint, tmp_path / "package", calibration=tmp_path / "int8.json")
    assert Int8Calibration.load(package / "int8_calibration.json").ranges == calibration.ranges
    assert "int8 calibration" in (package / "README.md").read_text()
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    assert Predictor.from_pretrained(package, "cpu", size=64).precision == "int8"
    assert Predictor.from_pretrained(package, "cpu", size=64, precision="bf16").precision == "bf16"
    export_package(tiny_checkpoint, package, overwrite=True)
    assert not (package / "int8_calibration.json").exists()
    assert Predictor.from_pretrained(package, "cpu", size=64).precision == "bf16"
    other = Int8Calibration({**calibration.ranges, "layer1.2.out": 1.0}, 2, 64)
    other.save(tmp_path / "other.json")
    with pytest.raises(Int8CalibrationError, match="does not fit this network"):
        export_package(tiny_checkpoint, tmp_path / "other", calibration=tmp_path / "other.json")


def test_evaluation_runs_int8_with_a_calibration(tiny_checkpoint, tmp_path):
    from pgnet.evaluation.evaluator import EvalDataset, ModelMethod, evaluate

    images, masks = tmp_path / "image", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    for index, picture in enumerate(PICTURES[:2]):
        cv2.imwrite(str(images / f"p{index}.jpg"), picture[:, :, ::-1])
        cv2.imwrite(str(masks / f"p{index}.png"), (picture[:, :, 0] > 128).astype(np.uint8) * 255)
    calibration = calibrate_pictures(load_model(tiny_checkpoint, "cpu"), PICTURES[:2], 64)
    calibration.save(tmp_path / "int8.json")
    method = ModelMethod(tiny_checkpoint, size=64, precision="int8", calibration=tmp_path / "int8.json", num_workers=0)
    report = evaluate([EvalDataset("set", masks, images)], tmp_path / "out", model_method=method, metrics=["MAE"],
                      device="cpu", progress=False, echo=None)
    assert report.meta["precision"] == "int8" and report.meta["calibration"] == str(tmp_path / "int8.json")
    (result,) = report.results
    assert result.num_images == 2 and 0 <= result.metrics["MAE"] <= 1
