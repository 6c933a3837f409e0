"""Inference precisions on the CPU: their speed end to end, and what they cost in scores.

``measure_predictor_speed`` times the ``Predictor`` at each precision (preprocessing, the network and the
resize to the picture included) against the official code run the same way (the official test
preprocessing, the network eager in float32 with its attention branch, the resize, the sigmoid), call
by call interleaved so that load on a shared machine affects all alike.

``measure_precision_scores`` scores a trained model at each precision on pictures with masks and
reports each score's difference from float32, with the largest and mean probability difference: the
rule ``auto`` is held to (``AUTO_RULE_SCORE``, ``AUTO_RULE_MEAN_PROBABILITY``) is judged on these.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pgnet.benchmark.record import figure
from pgnet.benchmark.timing import timed
from pgnet.data.preprocessing import Preprocessing, prepare_batch
from pgnet.metrics.suite import SODMetrics
from pgnet.models.pgnet import PGNet
from pgnet.predict.calibration import calibrate_pictures
from pgnet.predict.int8 import Int8Calibration
from pgnet.predict.predictor import Predictor

SCORES = ("Sm", "MAE", "maxFm", "BIoU", "mBA")
# A precision may be ``auto``'s choice when every score is this close to float32's ...
AUTO_RULE_SCORE = 0.002
# ... and the mean absolute probability difference from float32 is at most this.
AUTO_RULE_MEAN_PROBABILITY = 2e-3


def official_predict(model: PGNet, picture: np.ndarray, size: int, preprocessing: Preprocessing) -> torch.Tensor:
    """The official code's mask of one picture: its test preprocessing, the network eager in float32
    with the attention branch, the resize to the picture and the sigmoid (H×W float32)."""
    images = prepare_batch([picture], size, preprocessing, False, torch.device("cpu"))  # 1×3×S×S
    height, width = picture.shape[:2]
    with torch.no_grad():
        logits = model(images, need_attention=True).pred  # 1×1×S×S
        resized = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear",
                                                  align_corners=False)
    return torch.sigmoid(resized)[0, 0]


def measure_predictor_speed(
    model: PGNet,
    precisions: Sequence[str] = ("fp32", "bf16", "auto"),
    size: int = 1024,
    picture: np.ndarray | None = None,
    iterations: int = 5,
    warmup: int = 1,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    calibration: Int8Calibration | None = None,
) -> list[dict[str, Any]]:
    """Pictures/s of the official code and of a ``Predictor`` at each precision on one picture
    (default: a random size×size one), timed interleaved, with the speedup over the official code and
    each mask's largest and mean difference from the official one. "int8" runs with ``calibration``
    (default: one made from the timed picture), and so does "auto" when it is given and records a
    check that held the accuracy rule (the calibrated model's default path)."""
    preprocessing = preprocessing or Preprocessing()
    if picture is None:
        picture = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    model = model.eval().cpu()
    device = torch.device("cpu")
    given = calibration  # auto may use a given calibration (when its check held), never the one made here
    if "int8" in precisions and calibration is None:
        calibration = calibrate_pictures(model, [picture], size, preprocessing)
    chosen = {"int8": calibration, "auto": given}
    predictors = {p: Predictor(model, size=size, device="cpu", precision=p, preprocessing=preprocessing,
                               calibration=chosen.get(p)) for p in precisions}
    paths: dict[str, Any] = {"official_fp32": lambda: official_predict(model, picture, size, preprocessing)}
    for name, predictor in predictors.items():
        paths[f"predictor_{name}"] = lambda predictor=predictor: predictor(picture)
    reference = official_predict(model, picture, size, preprocessing).numpy()
    differences = {}
    for name, run in paths.items():
        for _ in range(warmup):
            run()
        mask = np.asarray(run(), dtype=np.float32)
        differences[name] = np.abs(mask - reference)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(iterations):
        for name, run in paths.items():
            seconds[name].append(timed(run, device))
    baseline = statistics.median(seconds["official_fp32"])
    figures = []
    for name in paths:
        median = statistics.median(seconds[name])
        resolved = predictors[name.removeprefix("predictor_")].precision if name != "official_fp32" else "fp32"
        figures.append(figure(
            "predictor_precision", name, 1 / median, "pictures/s", device, resolved, size=size, batch=1,
            picture=list(picture.shape[:2]), median_ms=1000 * median, min_ms=1000 * min(seconds[name]),
            iterations=iterations, speedup=baseline / median,
            max_abs_diff_probability=float(differences[name].max()),
            mean_abs_diff_probability=float(differences[name].mean()),
        ))
    return figures


def measure_precision_scores(
    model: PGNet,
    samples: Sequence[tuple[np.ndarray, np.ndarray | None]],
    precisions: Sequence[str] = ("fp32", "bf16"),
    size: int | None = None,
    preprocessing: Preprocessing | None = None,
    calibration: Int8Calibration | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores of ``model`` on ``samples`` ((RGB picture, mask) pairs) at each precision, each with its
    differences from float32 (``delta_<score>``), the largest and mean probability difference, and
    whether ``AUTO_RULE_*`` holds (``auto_rule``). float32 is always measured, first; "int8" runs with
    ``calibration``. Samples without masks (None) give the probability differences only, and then
    ``auto_rule`` is False: the rule needs the scores."""
    preprocessing = preprocessing or Preprocessing()
    with_masks = all(mask is not None for _, mask in samples)
    results: dict[str, dict[str, Any]] = {}
    reference: list[np.ndarray] = []
    for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
        predictor = Predictor(model, size=size, device="cpu", precision=precision, preprocessing=preprocessing,
                              calibration=calibration if precision == "int8" else None)
        metrics = SODMetrics(("Sm", "MAE", "Fm", "BIoU", "mBA"))
        largest, total, pixels = 0.0, 0.0, 0
        for index, (picture, mask) in enumerate(samples):
            prediction = predictor(picture)
            if with_masks:
                metrics.update(prediction, mask)
            if precision == "fp32":
                reference.append(prediction)
            difference = np.abs(prediction - reference[index])
            largest = max(largest, float(difference.max()))
            total += float(difference.sum())
            pixels += difference.size
        scores = metrics.compute() if with_masks else {}
        result: dict[str, Any] = {"resolved": predictor.precision, "pictures": len(samples),
                                  **{k: scores[k] for k in SCORES if k in scores}}
        result["max_abs_diff_probability"] = largest
        result["mean_abs_diff_probability"] = total / pixels
        if precision != "fp32" and with_masks:
            for key in SCORES:
                result[f"delta_{key}"] = scores[key] - results["fp32"][key]
        result["auto_rule"] = with_masks \
            and all(abs(result.get(f"delta_{key}", 0.0)) <= AUTO_RULE_SCORE for key in SCORES) \
            and result["mean_abs_diff_probability"] <= AUTO_RULE_MEAN_PROBABILITY
        results[precision] = result
    return results



def format_precision_figures(report: dict[str, Any]) -> str:
    """The speed figures and the scores of ``pgnet-benchmark precision``'s report as text tables."""
    lines = []
    if report.get("speed"):
        lines.append(f"{'path':18s} {'precision':>9s} {'median ms':>10s} {'speedup':>8s} {'max |Δp|':>9s} "
                     f"{'mean |Δp|':>9s}")
        for f in report["speed"]:
            lines.append(f"{f['name']:18s} {f['dtype']:>9s} {f['median_ms']:10.1f} {f['speedup']:7.2f}x "
                         f"{f['max_abs_diff_probability']:9.1e} {f['mean_abs_diff_probability']:9.1e}")
    if report.get("scores"):
        lines.append("")
        lines.append(f"{'precision':10s} " + " ".join(f"{k:>8s} {'Δ':>8s}" for k in SCORES)
                     + f" {'max |Δp|':>9s} {'mean |Δp|':>9s} auto rule")
        for name, r in report["scores"].items():
            cells = " ".join(f"{r[k]:8.4f} {r.get(f'delta_{k}', 0.0):+8.4f}" if k in r else f"{'-':>8s} {'-':>8s}"
                             for k in SCORES)
            lines.append(f"{name:10s} {cells} {r['max_abs_diff_probability']:9.1e} "
                         f"{r['mean_abs_diff_probability']:9.1e} {'holds' if r['auto_rule'] else 'fails'}")
    return "\n".join(lines)
