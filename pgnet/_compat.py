"""Make ``import torchvision`` work beside a CPU-only torch.

The torchvision wheel on the package registry is a CUDA build. Next to a CPU build of torch its
compiled operators do not load, and importing it (and therefore ``timm``) fails with
``RuntimeError: operator torchvision::nms does not exist`` while registering fake kernels for
``torchvision::nms`` and ``torchvision::qnms``. On exactly that error this module declares the two
missing operator schemas (without kernels), drops the half-imported torchvision modules and imports
again. Anything else is left alone: where torchvision imports normally this module does nothing.

This is the one import-time side effect in the package; the modules that import timm run it first.
"""

from __future__ import annotations

import sys

import torch

MISSING_OPERATOR_ERROR = "operator torchvision::nms does not exist"

# Schemas of the operators torchvision registers fake kernels for at import time.
_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# The library fragment must stay referenced: when it is garbage collected the schemas go with it.
_torchvision_fragment: torch.library.Library | None = None


def _drop_torchvision_modules() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _declare_missing_operators() -> torch.library.Library:
    fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS:
        fragment.define(schema)
    return fragment


def ensure_torchvision_importable() -> bool:
    """Import torchvision, patching the CPU-torch/CUDA-torchvision mismatch if needed.

    Returns True when the patch was applied, False when torchvision imported as it is (or is not
    installed at all). Any other import error is raised unchanged.
    """
    global _torchvision_fragment
    try:
        import torchvision
    except ModuleNotFoundError:
        return False
    except RuntimeError as error:
        if MISSING_OPERATOR_ERROR not in str(error):
            raise
        _drop_torchvision_modules()
        if _torchvision_fragment is None:
            _torchvision_fragment = _declare_missing_operators()
        import torchvision  # noqa: F401

        return True
    return False


ensure_torchvision_importable()
