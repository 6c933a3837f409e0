"""pgnet: the Pyramid Grafting Network for one-stage high-resolution salient object detection.

The names below are imported on first use (PEP 562), so ``import pgnet`` and the commands' ``--help``
do not load torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ModelConfig", "PGNet", "PGNetOutput", "Predictor", "create_model", "load_model"]

_LAZY_NAMES = {
    "ModelConfig": "pgnet.models.pgnet",
    "PGNet": "pgnet.models.pgnet",
    "PGNetOutput": "pgnet.models.pgnet",
    "create_model": "pgnet.models.pgnet",
    "load_model": "pgnet.checkpoint",
    "Predictor": "pgnet.predict.predictor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'pgnet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
