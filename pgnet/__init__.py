"""pgnet: the Pyramid Grafting Network for one-stage high-resolution salient object detection."""

from pgnet import _compat  # noqa: F401  (first: makes torchvision, hence timm, importable)
from pgnet.checkpoint import load_model
from pgnet.models import ModelConfig, PGNet, PGNetOutput, create_model

__version__ = "0.1.0"
__all__ = ["ModelConfig", "PGNet", "PGNetOutput", "Predictor", "create_model", "load_model"]


def __getattr__(name: str) -> type:
    # ``Predictor`` is imported on first use: it brings in the image I/O and transform modules.
    if name == "Predictor":
        from pgnet.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'pgnet' has no attribute {name!r}")
