"""Preprocessing travels with the checkpoint; evaluation follows the official test protocol by default."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pgnet.checkpoint import load_checkpoint, load_model_and_preprocessing, save_checkpoint
from pgnet.config import load_config
from pgnet.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    Preprocessing,
    normalization_stats,
    normalize,
    normalize_then_resize,
)
from pgnet.data.transforms import build_eval_transform
from pgnet.evaluation.evaluator import ModelMethod, method_preprocessing
from pgnet.predict.export import SaliencyModel
from pgnet.predict.predictor import Predictor
from pgnet.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """Two optimiser steps of a tiny model trained with ImageNet statistics and a 64 px test size."""
    overrides = [
        "model.swin=swin_tiny_patch4_window7_224", "model.swin_input_size=32",
        "data.train=[{name: synthetic, n: 4, size: 64, seed: 0}]", "data.val=[]",
        "data.size=64", "data.multiscale=[64]", "data.eval_size=96", "data.batch_size=2", "data.num_workers=0",
        "data.normalization=imagenet", "train.epochs=1", "train.image_every=0", "train.log_every=1",
    ]
    run_dir = tmp_path_factory.mktemp("runs") / "imagenet"
    Trainer(load_config(REPO / "configs" / "demo.yaml", overrides), run_dir).fit()
    return run_dir / "checkpoints" / "last.pth"


def test_a_trained_checkpoint_records_its_statistics_and_test_size(imagenet_run):
    state = load_checkpoint(imagenet_run)
    assert state["preprocessing"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "eval_size": 96}


def test_the_predictor_uses_the_checkpoint_statistics(imagenet_run):
    predictor = Predictor.from_checkpoint(imagenet_run, device="cpu", optimize=False)
    assert predictor.preprocessing.mean == IMAGENET_MEAN and predictor.size == 96
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mask = predictor(image)
    # By hand: the ImageNet statistics, the official order (normalise, then resize), the network.
    x = torch.from_numpy(normalize_then_resize(image, 96, IMAGENET_MEAN, IMAGENET_STD)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = predictor.model(x, output_size=(24, 24)).pred
    expected = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(70, 90), mode="bilinear"))[0, 0]
    np.testing.assert_allclose(mask, expected.numpy(), atol=1e-5)
    # The official statistics give another mask: the statistics are not ignored.
    official = Predictor(predictor.model, size=96, device="cpu", optimize=False)
    assert np.abs(official(image) - mask).max() > 1e-3


def test_evaluation_and_export_read_the_checkpoint_statistics(imagenet_run):
    model, recorded = load_model_and_preprocessing(imagenet_run)
    assert method_preprocessing(ModelMethod(imagenet_run), recorded) == recorded
    overridden = method_preprocessing(ModelMethod(imagenet_run, size=128, normalization="official"), recorded)
    assert (overridden.mean, overridden.std, overridden.eval_size) == (OFFICIAL_MEAN, OFFICIAL_STD, 128)
    image = torch.rand(1, 3, 64, 64) * 255
    exported = SaliencyModel(model, preprocessing=recorded)
    with torch.no_grad():
        expected = torch.sigmoid(model(normalize(image, IMAGENET_MEAN, IMAGENET_STD)).pred)
        torch.testing.assert_close(exported(image), expected)


def test_an_old_checkpoint_without_the_field_gets_the_official_statistics(imagenet_run, tmp_path):
    state = load_checkpoint(imagenet_run)
    del state["preprocessing"]  # as written before checkpoints recorded it
    path = save_checkpoint(state, tmp_path / "old.pth")
    model, preprocessing = load_model_and_preprocessing(path)
    assert preprocessing == Preprocessing(OFFICIAL_MEAN, OFFICIAL_STD, 1024)
    assert Predictor(model, device="cpu", optimize=False, preprocessing=preprocessing).size == 1024


def test_a_bad_preprocessing_entry_names_the_file(tmp_path):
    state = {"format": "pgnet", "preprocessing": {"mean": [1, 2], "std": [1, 1, 1], "eval_size": 64}}
    path = save_checkpoint(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: invalid 'preprocessing'"):
        load_model_and_preprocessing(path)


def test_one_function_gives_the_statistics():
    assert normalization_stats() == (OFFICIAL_MEAN, OFFICIAL_STD)
    assert normalization_stats("imagenet", mean=[1, 2, 3]) == ((1.0, 2.0, 3.0), IMAGENET_STD)
    with pytest.raises(ValueError, match="unknown normalization 'coco'"):
        normalization_stats("coco")
    with pytest.raises(ValueError, match="std values must be positive"):
        normalization_stats(std=[1, 0, 1])


def test_the_eval_transform_is_the_official_protocol_by_default():
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), np.uint8)
    official = build_eval_transform(64)
    assert official.input_size is None  # readers decode the full picture
    tensor, _ = official(image, mask)
    # The official test code: float image, normalised, then cv2 bilinear resize.
    by_hand = cv2.resize((image.astype(np.float32) - OFFICIAL_MEAN) / OFFICIAL_STD, (64, 64),
                         interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), by_hand, atol=1e-5)
    np.testing.assert_allclose(normalize_then_resize(image, 64), by_hand, atol=1e-5)
    fast = build_eval_transform(64, fast_decode=True)
    assert fast.input_size == 64  # readers may decode large JPEGs reduced
    fast_tensor, _ = fast(image, mask)
    difference = (fast_tensor - tensor).abs().max().item()
    assert 0 < difference < 0.02  # the uint8 rounding of the resized picture, at most half a level / std
