"""Model packages (pgnet.checkpoint, pgnet-export --format package): no pickle, the checkpoint's
predictions, read by every command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_pair

from pgnet.checkpoint import MissingWeightsError, model_checkpoint, read_model_weights, save_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.cli.export import main as export_main
from pgnet.cli.predict import main as predict_main
from pgnet.data.io import read_mask
from pgnet.data.preprocessing import Preprocessing
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.models.weights import CheckpointError
from pgnet.predict.predictor import Predictor

TINY = ModelConfig(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)
HISTORY = [{"epoch": 3, "step": 12, "metrics": {"synthetic": {"MAE": 0.0354, "Sm": 0.8457}}}]


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint as the trainer writes it: weights, an optimiser state, the run's history."""
    torch.manual_seed(0)
    model = PGNet(TINY)
    optimizer = torch.optim.AdamW(model.parameters())
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # the two moments of every parameter, as a training checkpoint holds them
    state = model_checkpoint(model, Preprocessing(mean=(120.0, 110.0, 100.0), eval_size=64),
                             optimizer=optimizer.state_dict(), history=HISTORY, best=0.8457, best_step=12,
                             position={"epoch": 3, "global_step": 12})
    return save_checkpoint(state, tmp_path_factory.mktemp("package") / "last.pth")


@pytest.fixture(scope="module")
def package(training_checkpoint) -> Path:
    folder = training_checkpoint.parent / "released"
    assert export_main([str(training_checkpoint), str(folder), "--format", "package", "--license", "CC-BY-4.0"]) == 0
    return folder


def test_a_package_holds_no_pickle_and_predicts_as_its_checkpoint(training_checkpoint, package):
    assert sorted(path.name for path in package.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for path in package.iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # neither a pickle nor torch's zip
    config = json.loads((package / "config.json").read_text())
    assert config["preprocessing"] == {"mean": [120.0, 110.0, 100.0], "std": list(Preprocessing().std),
                                       "eval_size": 64}
    assert config["model_config"]["swin_input_size"] == 64
    assert package.stat().st_size < training_checkpoint.stat().st_size
    weights_size = (package / "model.safetensors").stat().st_size
    assert weights_size < 0.5 * training_checkpoint.stat().st_size  # AdamW's two moments are left behind
    pictures = [(np.random.default_rng(seed).random((40 + seed, 56, 3)) * 255).astype(np.uint8) for seed in range(2)]
    released = Predictor.from_pretrained(package, "cpu")
    original = Predictor.from_checkpoint(training_checkpoint, "cpu")
    assert released.preprocessing == original.preprocessing and released.size == 64
    for image in pictures:
        np.testing.assert_array_equal(released(image), original(image))


def test_the_model_card_names_the_source_the_licence_and_the_last_validation(training_checkpoint, package):
    card = (package / "README.md").read_text()
    assert str(training_checkpoint) in card and "licence: CC-BY-4.0" in card
    assert "synthetic (validation data): MAE 0.0354, Sm 0.8457" in card
    assert "epoch 3, step 12" in card


def test_half_weights_are_half_the_size_and_read_back_as_float32(training_checkpoint, package, tmp_path):
    half = tmp_path / "half"
    assert export_main([str(training_checkpoint), str(half), "--format", "package", "--half"]) == 0
    ratio = (half / "model.safetensors").stat().st_size / (package / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    halved, full = read_model_weights(half).state_dict, read_model_weights(package).state_dict
    assert all(value.dtype in (torch.float32, torch.int64) for value in halved.values())
    for key, value in full.items():  # float16 rounding: a relative error under 2^-11
        assert torch.allclose(halved[key], value, rtol=1e-3, atol=1e-4), key


def test_predict_and_eval_commands_read_a_package(package, tmp_path):
    images, gt = tmp_path / "images", tmp_path / "gt"
    for index in range(2):
        write_pair(images / f"a{index}.jpg", gt / f"a{index}.png", seed=index)
    assert predict_main([str(images), "-c", str(package), "-o", str(tmp_path / "masks"), "--device", "cpu",
                         "--no-progress"]) == 0
    assert read_mask(tmp_path / "masks" / "a0.png").shape == read_mask(gt / "a0.png").shape
    assert eval_main(["-c", str(package), "--name", "pkg", "--gt", f"d={gt}", "--images", f"d={images}",
                      "-o", str(tmp_path / "results"), "--no-progress", "--device", "cpu"]) == 0


def test_package_errors_name_the_folder(package, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((package / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"broken: no model\.safetensors"):
        read_model_weights(broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt"):
        read_model_weights(broken)
    with pytest.raises(MissingWeightsError, match="one set of weights"):
        read_model_weights(package, weights="ema")
    assert export_main([str(tmp_path / "missing.pth"), str(package), "--format", "package"]) == 2
    assert export_main([str(package), str(package), "--format", "package"]) == 2
    assert "already holds a config.json" in capsys.readouterr().err
