"""pgnet: the Pyramid Grafting Network for one-stage high-resolution salient object detection."""

from pgnet import _compat  # noqa: F401  (first: makes torchvision, hence timm, importable)
from pgnet.checkpoint import load_model
from pgnet.models import ModelConfig, PGNet, PGNetOutput, create_model

__version__ = "0.1.0"
__all__ = ["ModelConfig", "PGNet", "PGNetOutput", "create_model", "load_model"]
