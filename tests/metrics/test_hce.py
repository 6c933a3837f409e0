"""HCE (DIS5K's human correction effort) against pysodmetrics' ``HumanCorrectionEffortMeasure``, and its
Zhang–Suen thinning against scikit-image's ``skeletonize``, on many masks: random blobs, thin lines,
holes, noise, empty and full masks, one-pixel-wide images, the synthetic photos' masks.

PySODMetrics' own example masks (``examples/test_data``) are binary files this test environment cannot
fetch; the synthetic scenes of ``pgnet.data.synthetic`` (objects with holes and thin parts) stand in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pgnet.data.synthetic import make_sample
from pgnet.metrics import ALL_METRICS, OPTIONAL_METRICS, SODMetrics, resolve_metric_groups
from pgnet.metrics.hce import binarize_prediction, human_correction_effort, skeletonize

py_sod_metrics = pytest.importorskip("py_sod_metrics")
skimage_morphology = pytest.importorskip("skimage.morphology")  # a dependency of pysodmetrics

REPO = Path(__file__).resolve().parents[2]


def random_mask(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """bool H×W of one kind."""
    h, w = shape
    if kind == "empty":
        return np.zeros(shape, bool)
    if kind == "full":
        return np.ones(shape, bool)
    if kind == "noise":
        return rng.random(shape) < rng.uniform(0.1, 0.9)
    if kind == "blobs":
        sigma = rng.uniform(1, max(1.5, min(h, w) / 6))
        return cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma) > 0.5
    mask = np.zeros(shape, np.uint8)
    if kind == "lines":  # thin structures, one and two pixels wide, touching the border
        for _ in range(4):
            points = rng.integers(0, [w, h], (2, 2))
            cv2.line(mask, tuple(map(int, points[0])), tuple(map(int, points[1])), 1, int(rng.integers(1, 3)))
        return mask.astype(bool)
    if kind == "ring":  # a hole
        center = (w // 2, h // 2)
        cv2.circle(mask, center, max(1, min(h, w) // 2 - 1), 1, -1)
        cv2.circle(mask, center, max(1, min(h, w) // 5), 0, -1)
        return mask.astype(bool)
    raise ValueError(kind)


MASK_KINDS = ("empty", "full", "noise", "blobs", "lines", "ring")
SHAPES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (9, 9), (16, 31), (40, 33), (64, 64)]


def mask_cases(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cases = [random_mask(rng, shape, kind) for shape in SHAPES for kind in MASK_KINDS]
    cases += [make_sample(index, (72, 96))[1] > 128 for index in range(4)]  # holes and thin parts
    cases.append(cv2.imread(str(REPO / "docs" / "images" / "mask.png"), cv2.IMREAD_GRAYSCALE) > 128)
    return cases


def test_skeleton_equals_scikit_image():
    for index, mask in enumerate(mask_cases()):
        expected = skimage_morphology.skeletonize(mask)
        np.testing.assert_array_equal(skeletonize(mask), expected, err_msg=f"case {index} {mask.shape}")


def test_skeleton_of_a_large_thick_mask():
    rng = np.random.default_rng(1)
    mask = cv2.GaussianBlur(rng.random((400, 600)).astype(np.float32), (0, 0), 25) > 0.5
    np.testing.assert_array_equal(skeletonize(mask), skimage_morphology.skeletonize(mask))


def prediction(rng: np.random.Generator, gt: np.ndarray, kind: str) -> np.ndarray:
    """uint8 prediction of one kind for the uint8 0/255 mask ``gt``."""
    shape = gt.shape
    if kind == "exact":
        return gt.copy()
    if kind == "inverse":
        return 255 - gt
    if kind == "random":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind == "soft":
        blurred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 25, shape)
        return np.clip(blurred, 0, 255).astype(np.uint8)
    if kind == "shifted":
        return np.roll(gt, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
    if kind == "eroded":  # misses thin parts
        return cv2.erode(gt, np.ones((3, 3), np.uint8))
    if kind == "dilated":
        return cv2.dilate(gt, np.ones((5, 5), np.uint8))
    if kind == "narrow":  # min-max normalisation decides the binarisation
        return (rng.integers(100, 104, shape) + (gt > 128) * 2).astype(np.uint8)
    if kind.startswith("constant"):
        return np.full(shape, int(kind[len("constant"):]), np.uint8)
    raise ValueError(kind)


PRED_KINDS = ("exact", "inverse", "random", "soft", "shifted", "eroded", "dilated", "narrow", "constant0",
              "constant128", "constant255")


def pysod_hce(pred: np.ndarray, gt: np.ndarray) -> float:
    measure = py_sod_metrics.HumanCorrectionEffortMeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measure.step(pred, gt)
    return float(measure.hces[0])


def hce_cases(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for index, mask in enumerate(mask_cases(seed)):
        gt = mask.astype(np.uint8) * 255
        kinds = PRED_KINDS[index % 2 :: 2] if mask.size > 100 else PRED_KINDS[index % 3 :: 3]
        cases += [(prediction(rng, gt, kind), gt) for kind in kinds]
    return cases


def test_hce_equals_pysodmetrics_on_many_masks():
    cases = hce_cases()
    assert len(cases) > 200
    nonzero = 0
    for index, (pred, gt) in enumerate(cases):
        ours = human_correction_effort(pred, gt > 128)
        assert ours == pysod_hce(pred, gt), f"case {index}: {pred.shape}"
        nonzero += ours > 0
    assert nonzero > len(cases) // 2  # the cases exercise the measure, not only perfect predictions


def test_hce_of_degenerate_pairs():
    empty, full = np.zeros((20, 30), np.uint8), np.full((20, 30), 255, np.uint8)
    for pred, gt in [(empty, empty), (full, full), (empty, full), (full, empty), (full[:1, :1], empty[:1, :1])]:
        assert human_correction_effort(pred, gt > 128) == pysod_hce(pred, gt)
    assert human_correction_effort(empty, empty > 128) == 0 and human_correction_effort(full, full > 128) == 0


def test_binarisation_follows_the_min_max_normalisation():
    pred = np.array([[100, 101, 102, 103]], np.uint8)  # normalised to 0, 1/3, 2/3, 1: > 0.5 from 102
    assert binarize_prediction(pred).tolist() == [[False, False, True, True]]
    assert binarize_prediction(np.full((1, 2), 128, np.uint8)).all()  # constant: v / 255 > 0.5
    assert not binarize_prediction(np.full((1, 2), 127, np.uint8)).any()


def test_sodmetrics_hce_is_the_mean_over_images_and_optional():
    assert "HCE" in OPTIONAL_METRICS and "HCE" not in ALL_METRICS
    assert "HCE" not in SODMetrics().keys
    assert resolve_metric_groups(["default", "HCE"]) == (*ALL_METRICS, "HCE")
    metrics = SODMetrics(["MAE", "HCE"])
    reference = py_sod_metrics.HumanCorrectionEffortMeasure()
    cases = hce_cases(3)[::25]
    for pred, gt in cases:
        per_image = metrics.update(torch.from_numpy(pred), torch.from_numpy(gt))
        reference.step(pred, gt)
        assert per_image["HCE"].dtype == torch.float64
    assert metrics.compute()["HCE"] == pytest.approx(float(reference.get_results()["hce"]), abs=1e-9)
    batch = SODMetrics(["HCE"])  # a batch of same-sized images scores image by image
    same = [case for case in hce_cases(4) if case[0].shape == (64, 64)]
    assert len(same) > 10
    preds, gts = (torch.from_numpy(np.stack(arrays)) for arrays in zip(*same))
    assert batch.update(preds, gts)["HCE"].tolist() == [pysod_hce(p, g) for p, g in same]
