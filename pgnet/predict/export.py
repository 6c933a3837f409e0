"""ONNX export of the inference path.

The exported graph is ``SaliencyModel``: input ``image``, float32 B×3×H×W, RGB on the 0-255 scale
(not normalised: the checkpoint's normalisation, official by default, is inside the graph and named in
the metadata ``pgnet.preprocessing``, JSON: ``mean``, ``std``, ``eval_size``); output ``mask``, float32 B×1×H×W,
the saliency probability (sigmoid of the logits) at the input size; with ``logits=True`` the logits
instead. Batch, height and width are dynamic. The graph has no attention-map branch (the CMGM runs
``scaled_dot_product_attention``). To reproduce ``Predictor --fast-decode``, resize a picture to
the checkpoint's test size (1024×1024 officially; bilinear), run the graph, and resize the mask
back to the picture's size.

Export uses the dynamo exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``).
Every shape that depends on the input size is computed in the graph: the Swin branch always sees
``swin_input_size`` and the official grafting point always runs on the Swin s2 grid, so the CMGM
pooling stride of the official ``r5-s2`` point is a constant. A ``global`` grafting point at r4, r3 or
r2 pools a grid that scales with the input, and its stride (a Python integer) would be frozen at the
traced size: such models are exported with a fixed height and width (``static_size``). ``window``
points pad their grid to whole windows inside the graph and export with dynamic sizes.

``export_package`` writes the other released form, a model package folder (``pgnet.checkpoint``:
config, safetensors weights, model card), which every pgnet command reads like a checkpoint.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pgnet.checkpoint import ModelWeights, build_model, read_model_weights, write_model_package
from pgnet.data.preprocessing import Preprocessing, normalize
from pgnet.models.pgnet import PGNet
from pgnet.predict.int8 import Int8Calibration, check_calibration_fits
from pgnet.writing import write_bytes

INPUT_NAME = "image"
OUTPUT_NAME = "mask"
# The example input traced for a dynamic export: batch 2 and two different sides, none of whose
# strided grids (1/4 .. 1/32) equals a Swin grid, so that no shape is specialised while tracing.
TRACE_SHAPE = (2, 3, 480, 352)


class SaliencyModel(nn.Module):
    """PGNet's inference path for export: RGB 0-255 B×3×H×W → B×1×H×W probabilities (or logits),
    normalised with the ``preprocessing`` statistics (official when None)."""

    def __init__(self, model: PGNet, logits: bool = False, preprocessing: Preprocessing | None = None):
        super().__init__()
        self.model = model
        self.logits = logits
        self.preprocessing = preprocessing or Preprocessing()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pred = self.model(normalize(image, self.preprocessing.mean, self.preprocessing.std), need_attention=False).pred
        # pred: B×1×H×W logits
        return pred if self.logits else torch.sigmoid(pred)


def has_size_dependent_pooling(model: PGNet) -> bool:
    """Whether a global CMGM of ``model`` runs on a grid that scales with the input (any global point
    other than ``r5-s2``)."""
    kinds = model.decoder.graft_kinds
    return any(kind == "global" for point, kind in kinds.items() if point != "r5-s2")


def export_onnx(
    model: PGNet,
    path: str | Path,
    *,
    logits: bool = False,
    static_size: tuple[int, int] | None = None,
    opset: int | None = None,
    optimize: bool = True,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Export ``model``'s inference path to an ONNX file (see the module docstring for its interface).

    Args:
        model: the network (exported on the CPU in float32, in eval mode).
        path: the ``.onnx`` file to write (one file, weights included).
        logits: output the logits instead of the probabilities.
        static_size: (H, W) to fix the input size; None keeps height and width dynamic. Required for
            models with a global grafting point other than ``r5-s2``.
        opset: the ONNX opset (the exporter's default when None).
        optimize: let the exporter optimise the graph (constant folding, fusions).
        preprocessing: the statistics the graph normalises with (the checkpoint's; official when None).
    """
    try:  # lazy: onnx and onnxscript are an optional extra, needed only here
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install -c constraints.txt '.[onnx]'") from error
    if static_size is None and has_size_dependent_pooling(model):
        raise ValueError(
            "this model has a global grafting point other than r5-s2, whose CMGM pooling stride depends on the "
            "input size: export it with a fixed size (static_size=(H, W), --static-size H W), or use ':window' points"
        )
    path = Path(path)
    preprocessing = preprocessing or Preprocessing()
    wrapper = SaliencyModel(model.float().cpu().eval(), logits=logits, preprocessing=preprocessing).eval()
    if static_size is None:
        example = torch.rand(TRACE_SHAPE) * 255
        dynamic_shapes = {"image": {0: "batch", 2: "height", 3: "width"}}
    else:
        height, width = (int(v) for v in static_size)
        example = torch.rand(2, 3, height, width) * 255
        dynamic_shapes = {"image": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
    program.model.metadata_props.update(
        {
            "pgnet.input": "image: float32 Bx3xHxW, RGB 0-255 (normalised inside the graph)",
            "pgnet.output": f"mask: float32 Bx1xHxW, {'logits' if logits else 'probabilities in [0, 1]'}",
            "pgnet.model_config": json.dumps(model.config.to_dict()),
            "pgnet.preprocessing": json.dumps(preprocessing.to_dict()),
        }
    )
    write_bytes(path, program.model_proto.SerializeToString())  # atomically; weights inside (under 2 GB)
    return path


def compare_onnx(
    model: PGNet,
    path: str | Path,
    shapes: Sequence[tuple[int, int, int, int]] = ((1, 3, 320, 256), (2, 3, 224, 288)),
    logits: bool = False,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
) -> list[float]:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch outputs, per input shape."""
    import onnxruntime  # lazy: an optional extra, needed only to compare

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = SaliencyModel(model.float().cpu().eval(), logits=logits, preprocessing=preprocessing).eval()
    generator = torch.Generator().manual_seed(seed)
    differences = []
    for shape in shapes:
        image = torch.rand(shape, generator=generator) * 255
        with torch.no_grad():
            expected = wrapper(image).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})
        if actual.shape != expected.shape:
            raise AssertionError(f"{path}: output shape {actual.shape} for input {shape}, expected {expected.shape}")
        differences.append(float(np.abs(actual - expected).max()))
    return differences


def model_card(found: ModelWeights, half: bool = False, license: str = "unspecified",
               int8: Int8Calibration | None = None) -> str:
    """The ``README.md`` of a model package: what the model is, where it came from, how to use it, and
    the run's last validation scores when the checkpoint recorded them."""
    config, pre = found.config, found.preprocessing
    lines = [
        "# PGNet salient object detection model", "",
        f"- source checkpoint: `{found.description}`",
        f"- licence: {license}",
        f"- network: Swin `{config.swin}` at {config.swin_input_size} px, ResNet `{config.resnet}`",
        f"- weights: {'float16 (read back as float32)' if half else 'float32'}, `model.safetensors`",
        f"- preprocessing: RGB, (x - mean) / std on the 0-255 scale, mean {list(pre.mean)}, std {list(pre.std)}; "
        f"test size {pre.eval_size}x{pre.eval_size}",
    ]
    info: dict[str, Any] = found.info
    if "position" in info:
        lines.append(f"- training: epoch {info['position'].get('epoch')}, step {info['position'].get('global_step')}")
    if info.get("converted_from"):
        lines.append(f"- converted from the official checkpoint `{info['converted_from']}`")
    history = info.get("history") or []
    if history and isinstance(history[-1], dict) and history[-1].get("metrics"):
        last = history[-1]
        lines += ["", f"## Last validation (epoch {last.get('epoch')}, step {last.get('step')})", ""]
        for dataset, scores in last["metrics"].items():
            figures = ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if isinstance(value, float))
            lines.append(f"- {dataset} (validation data): {figures}")
    if info.get("best") is not None:
        lines.append(f"- best validation score: {info['best']:.4f} at step {info.get('best_step')}")
    if int8 is not None:
        check = int8.check
        held = "held" if check.get("auto_rule") else "did not hold"
        lines.append(f"- int8 calibration (`int8_calibration.json`): {int8.pictures} pictures at {int8.size} px; "
                     f"its check against float32 {held} the accuracy rule (mean probability difference "
                     f"{check.get('mean_abs_diff_probability', float('nan')):.1e})")
    lines += ["", "## Use", "", "```",
              "pgnet-predict -c THIS_FOLDER pictures/ -o masks/",
              "pgnet-serve THIS_FOLDER",
              "python -c \"import pgnet; pgnet.Predictor.from_pretrained('THIS_FOLDER')\"", "```", ""]
    return "\n".join(lines)


def export_package(
    checkpoint: str | Path, folder: str | Path, *, weights: str = "model", half: bool = False,
    license: str = "unspecified", overwrite: bool = False, calibration: str | Path | None = None,
) -> Path:
    """Write the model of a project or official ``checkpoint`` as a package folder (weights only,
    safetensors; float16 with ``half``) with its model card, and with ``calibration`` (a
    ``pgnet-calibrate`` file of this model) its int8 calibration, which the package's predictor uses."""
    found = read_model_weights(checkpoint, weights)
    int8 = None
    if calibration is not None:
        int8 = Int8Calibration.load(calibration)
        check_calibration_fits(int8, build_model(found), str(calibration))
    card = model_card(found, half, license, int8)
    return write_model_package(found, folder, half=half, card=card, overwrite=overwrite,
                               int8_calibration=None if int8 is None else json.dumps(int8.to_dict(), indent=2) + "\n")
