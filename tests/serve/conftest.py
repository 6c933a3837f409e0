"""Fixtures of the serving tests: one tiny model package (64 px) and its predictor, built once."""

from pathlib import Path

import pytest
import torch

from pgnet.checkpoint import model_checkpoint, save_checkpoint
from pgnet.data.preprocessing import Preprocessing
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.predict.export import export_package
from pgnet.predict.predictor import Predictor

TINY = ModelConfig(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)


@pytest.fixture(scope="session")
def serve_package(tmp_path_factory) -> Path:
    """A model package of a tiny random network (test size 64)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve")
    checkpoint = save_checkpoint(model_checkpoint(PGNet(TINY), Preprocessing(eval_size=64)), folder / "tiny.pth")
    return export_package(checkpoint, folder / "package")


@pytest.fixture(scope="session")
def serve_predictor(serve_package) -> Predictor:
    """The package's predictor on the CPU (shared: the tests only predict with it)."""
    return Predictor.from_pretrained(serve_package, "cpu", batch_size=16)

