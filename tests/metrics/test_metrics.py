"""pgnet.metrics against its references: pysodmetrics 1.6 for the SOD metrics, the papers' code for
BIoU and mBA (re-stated here with OpenCV), scipy for distances; the torch kernels against OpenCV's."""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from pgnet.metrics import ALL_METRICS, SOD_METRICS, SODMetrics, binarize_ground_truth, quantize_prediction
from pgnet.metrics.boundary import biou_dilation, mba_radii
from pgnet.metrics.distance import distance_to_foreground, nearest_foreground_near_boundary
from pgnet.metrics.morphology import dilate_square, elliptic_gradient, erode_square
from pgnet.metrics.reference import PySODReference

py_sod_metrics = pytest.importorskip("py_sod_metrics")

TOLERANCE = 1e-6
SOD_KEYS = ("MAE", "Sm", "adpEm", "meanEm", "maxEm", "adpFm", "meanFm", "maxFm", "wFm")
SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (3, 2), (5, 5), (7, 12), (16, 9), (31, 17), (33, 64), (64, 33), (97, 101)]


# ----------------------------------------------------------------------------- references


def official_boundary_iou(gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU as the official API computes it (``mask_to_boundary`` + ``boundary_iou``)."""

    def mask_to_boundary(mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        dilation = max(1, round(float(dilation_ratio * np.sqrt(h**2 + w**2))))
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
        return mask - eroded

    gt_boundary = mask_to_boundary((gt > 128).astype(np.uint8))
    pred_boundary = mask_to_boundary((pred > 128).astype(np.uint8))
    intersection = ((gt_boundary * pred_boundary) > 0).sum()
    union = ((gt_boundary + pred_boundary) > 0).sum()
    return intersection / union


def cascadepsp_mba(gt: np.ndarray, pred: np.ndarray) -> float:
    """mBA as CascadePSP's ``compute_boundary_acc`` computes it on maps binarised at 128."""
    gt = (gt > 128).astype(np.uint8)
    pred = (pred > 128).astype(np.uint8)
    h, w = gt.shape
    max_radius = (w + h) / 300
    accuracies = []
    for i in range(5):
        radius = 1 + int((max_radius - 1) / 5 * i)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (radius * 2 + 1, radius * 2 + 1))
        region = cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, kernel) > 0
        gt_in, pred_in = gt[region], pred[region]
        good = (gt_in * pred_in + (1 - gt_in) * (1 - pred_in)).sum()
        accuracies.append(good / region.sum())
    return sum(accuracies) / 5


# ----------------------------------------------------------------------------- test data


def make_mask(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """uint8 0..255 ground truth (not binary: the metrics binarise it at > 128)."""
    h, w = shape
    if kind == "empty":
        return rng.integers(0, 129, shape).astype(np.uint8)  # all at or below the threshold
    if kind == "full":
        return rng.integers(129, 256, shape).astype(np.uint8)
    if kind == "noise":
        return (rng.random(shape) < rng.uniform(0.2, 0.8)).astype(np.uint8) * 255
    mask = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.2, 0.6) * h + 0.5, rng.uniform(0.2, 0.6) * w + 0.5
    mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 255
    if kind == "blob_line":
        cv2.line(mask, (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h))), 200, 1)
    return mask


def make_pred(rng: np.random.Generator, gt: np.ndarray, kind: str) -> np.ndarray:
    shape = gt.shape
    if kind == "random":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind == "soft":
        blurred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 20, shape)
        return np.clip(blurred, 0, 255).round().astype(np.uint8)
    if kind == "narrow":  # few distinct values in a narrow range: min-max normalisation matters
        return rng.integers(100, 104, shape).astype(np.uint8)
    if kind.startswith("constant"):
        return np.full(shape, int(kind[len("constant"):]), np.uint8)
    if kind == "exact":
        return gt.copy()
    if kind == "float":
        return rng.random(shape, dtype=np.float32)
    raise ValueError(kind)


def pysod_input(pred: np.ndarray) -> np.ndarray:
    """What pysodmetrics reads for a prediction: float maps as their 8-bit PNG."""
    if pred.dtype == np.uint8:
        return pred
    return (np.clip(pred, 0, 1) * np.float32(255)).round().astype(np.uint8)


def empty_quadrant(gt: np.ndarray) -> bool:
    """Masks whose S-measure centroid falls on the last row or column: a quadrant is empty and
    pysodmetrics returns NaN for the S-measure (a documented difference)."""
    fg = gt > 128
    if not fg.any() or fg.all():
        return False
    cy, cx = np.argwhere(fg).mean(axis=0).round() + 1
    return cy >= gt.shape[0] or cx >= gt.shape[1]


def sod_cases(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    mask_kinds = ["noise", "blob", "blob_line", "empty", "full"]
    pred_kinds = ["random", "soft", "narrow", "constant0", "constant77", "constant255", "exact", "float"]
    cases = []
    for index, shape in enumerate(SHAPES):
        for mask_kind in mask_kinds:
            for pred_kind in pred_kinds[index % 2 :: 2] if shape[0] * shape[1] > 4 else pred_kinds:
                gt = make_mask(rng, shape, mask_kind)
                cases.append((make_pred(rng, gt, pred_kind), gt))
    return cases


CASES = sod_cases()


# ----------------------------------------------------------------------------- SOD metrics vs pysodmetrics


def test_cases_cover_the_edge_cases():
    kinds = {(p.dtype.name, bool((g > 128).any()), bool((g > 128).all()), len(np.unique(p)) == 1) for p, g in CASES}
    assert ("uint8", False, False, False) in kinds  # empty mask
    assert ("uint8", True, True, False) in kinds  # full mask
    assert ("uint8", True, False, True) in kinds  # constant prediction
    assert ("float32", True, False, False) in kinds
    assert sum(empty_quadrant(g) for _, g in CASES) >= 3
    assert len(CASES) > 150


def test_per_image_values_match_pysodmetrics():
    mismatches = []
    for pred, gt in CASES:
        suite = SODMetrics(SOD_METRICS)
        per_image = suite.update(pred, gt)
        computed = suite.compute()
        expected = PySODReference().update(pysod_input(pred), gt).compute()
        for key in SOD_KEYS:
            if key == "Sm" and empty_quadrant(gt):
                assert math.isnan(expected[key]) and math.isfinite(computed[key])
                continue
            if not abs(computed[key] - expected[key]) <= TOLERANCE:
                mismatches.append((gt.shape, key, computed[key], expected[key]))
        for key in ("MAE", "Sm", "wFm"):
            assert float(per_image[key][0]) == pytest.approx(computed[key], abs=1e-12, nan_ok=True)
    assert not mismatches, mismatches[:10]


def test_dataset_values_and_curves_match_pysodmetrics():
    """One streaming suite over every image (all sizes mixed) against pysodmetrics over the same."""
    usable = [(pred, gt) for pred, gt in CASES if not empty_quadrant(gt)]
    suite = SODMetrics(SOD_METRICS)
    reference = PySODReference()
    for pred, gt in usable:
        suite.update(pred, gt)
        reference.update(pysod_input(pred), gt)
    computed, expected = suite.compute(), reference.compute()
    assert set(computed) == set(SOD_KEYS)
    for key in SOD_KEYS:
        # rel: 1×1 images have E-measures near 1e15 (pysodmetrics divides by N - 1 + eps).
        assert computed[key] == pytest.approx(expected[key], abs=TOLERANCE, rel=1e-13), key
    curves, expected_curves = suite.curves(), reference.curves()
    assert curves["threshold"].tolist() == list(range(255, -1, -1))
    for name, curve in expected_curves.items():
        assert curves[name].shape == (256,)
        np.testing.assert_allclose(curves[name], curve, rtol=1e-13, atol=TOLERANCE, err_msg=name)


def test_empty_quadrant_scores_zero_where_pysodmetrics_gives_nan():
    """Foreground only in the last column puts the centroid there: the right quadrants are empty."""
    gt = np.zeros((6, 5), np.uint8)
    gt[:, -1] = 255
    pred = np.random.default_rng(3).integers(0, 256, gt.shape).astype(np.uint8)
    suite = SODMetrics(["Sm"])
    suite.update(pred, gt)

    class ZeroForEmpty(py_sod_metrics.Smeasure):
        def ssim(self, pred, gt):
            return 0.0 if pred.size == 0 else super().ssim(pred, gt)

    reference = ZeroForEmpty()
    reference.step(pred, gt)
    assert suite.compute()["Sm"] == pytest.approx(reference.get_results()["sm"], abs=1e-12)


def test_weighted_f_distances_beyond_the_cap():
    """Background far from a small object (d > 300): the weights saturate as in float64."""
    rng = np.random.default_rng(5)
    gt = np.zeros((24, 700), np.uint8)
    gt[8:14, 3:9] = 255
    sparse = np.zeros(gt.shape, np.uint8)  # p > 0 only near the object and in one far patch
    sparse[5:16, 2:40] = rng.integers(0, 256, (11, 38))
    sparse[3:6, 250:260] = 77
    for pred in (rng.integers(0, 256, gt.shape).astype(np.uint8), np.full(gt.shape, 9, np.uint8), sparse):
        pred[10, 5] = 200
        for opencv in (None, False):
            suite = SODMetrics(["wFm"], opencv=opencv)
            suite.update(pred, gt)
            expected = PySODReference().update(pred, gt).compute()["wFm"]
            assert suite.compute()["wFm"] == pytest.approx(expected, abs=TOLERANCE)


def test_torch_kernels_give_the_opencv_results():
    """opencv=False (the path of non-CPU devices) against the default CPU path, every metric."""
    for pred, gt in CASES[::7]:
        fast, plain = SODMetrics(ALL_METRICS), SODMetrics(ALL_METRICS, opencv=False)
        fast.update(pred, gt)
        plain.update(pred, gt)
        for key, value in fast.compute().items():
            assert plain.compute()[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_batched_updates_equal_single_updates():
    rng = np.random.default_rng(7)
    gts = np.stack([make_mask(rng, (40, 56), kind) for kind in ("blob", "noise", "empty", "blob_line")])
    preds = np.stack([make_pred(rng, gt, "soft") for gt in gts])
    single = SODMetrics()
    for pred, gt in zip(preds, gts):
        single.update(pred, gt)
    for batch_pred, batch_gt in ((preds, gts), (preds[:, None], torch.from_numpy(gts)[:, None])):
        batched = SODMetrics()
        per_image = batched.update(torch.from_numpy(preds) if batch_pred is preds else batch_pred, batch_gt)
        assert per_image["MAE"].shape == (4,)
        assert batched.num_images == 4
        for key, value in single.compute().items():
            assert batched.compute()[key] == pytest.approx(value, abs=1e-12), key
    # Float predictions and float masks read as their 8-bit images would.
    as_float = SODMetrics()
    as_float.update(torch.from_numpy(preds).float() / 255, torch.from_numpy(gts).float() / 255)
    for key, value in single.compute().items():
        assert as_float.compute()[key] == pytest.approx(value, abs=1e-12), key


def test_merged_shares_equal_one_accumulation():
    """Shares of a test set accumulated apart (as the processes of a torchrun evaluation do, their
    states pickled between them) and merged give one accumulation's values, curves and counts."""
    rng = np.random.default_rng(3)
    shapes = [(40, 56), (33, 64), (64, 33), (17, 31), (56, 40)]
    gts = [make_mask(rng, shape, kind) for shape, kind in zip(shapes, ("blob", "noise", "empty", "blob_line", "blob"))]
    preds = [make_pred(rng, gt, "soft") for gt in gts]
    groups = [*ALL_METRICS, "HCE"]
    whole = SODMetrics(groups)
    for pred, gt in zip(preds, gts):
        whole.update(pred, gt)
    merged = SODMetrics(groups)
    for rank in range(3):  # shares of 2, 2 and 1 images
        share = SODMetrics(groups)
        for pred, gt in list(zip(preds, gts))[rank::3]:
            share.update(pred, gt)
        merged.merge(pickle.loads(pickle.dumps(share.state_dict())))
    merged.merge(SODMetrics(groups).state_dict())  # an empty share (more processes than images)
    assert merged.num_images == whole.num_images == 5
    for key, value in whole.compute().items():
        assert merged.compute()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    for name, curve in whole.curves().items():
        np.testing.assert_allclose(merged.curves()[name], curve, rtol=1e-12, atol=1e-15)
    for name, counts in whole.pixel_counts().items():
        np.testing.assert_array_equal(merged.pixel_counts()[name], counts)
    with pytest.raises(ValueError, match="cannot merge metrics of groups"):
        SODMetrics(["MAE"]).merge(whole.state_dict())


# ----------------------------------------------------------------------------- boundary metrics


def boundary_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    cases = []
    for shape in [(20, 30), (57, 41), (128, 96), (500, 640)]:  # the last gives mBA radii 1, 1, 2, 2, 3
        for mask_kind in ("blob", "noise", "blob_line"):
            gt = make_mask(rng, shape, mask_kind)
            for pred_kind in ("soft", "random", "exact"):
                cases.append((make_pred(rng, gt, pred_kind), gt))
    return cases


def test_boundary_metrics_match_the_papers_code():
    cases = boundary_cases()
    assert {tuple(mba_radii(*gt.shape)) for _, gt in cases} >= {(1, 1, 1, 1, 1), (1, 1, 2, 2, 3)}
    suite = SODMetrics(["BIoU", "mBA"])
    biou, mba = [], []
    for pred, gt in cases:
        values = suite.update(pred, gt)
        expected_biou, expected_mba = official_boundary_iou(gt, pred), cascadepsp_mba(gt, pred)
        assert float(values["BIoU"][0]) == pytest.approx(expected_biou, abs=1e-12)
        assert float(values["mBA"][0]) == pytest.approx(expected_mba, abs=1e-12)
        biou.append(expected_biou)
        mba.append(expected_mba)
    results = suite.compute()
    assert list(results) == ["BIoU", "mBA"]
    assert results["BIoU"] == pytest.approx(np.mean(biou), abs=1e-12)
    assert results["mBA"] == pytest.approx(np.mean(mba), abs=1e-12)


def test_boundary_metrics_of_degenerate_masks():
    empty, full = np.zeros((30, 40), np.uint8), np.full((30, 40), 255, np.uint8)
    suite = SODMetrics(["BIoU", "mBA"])
    assert float(suite.update(empty, empty)["BIoU"][0]) == 1.0  # no boundary on either side
    assert float(suite.update(np.full_like(empty, 255), empty)["BIoU"][0]) == 0.0
    assert float(suite.update(empty, full)["mBA"][0]) == 1.0  # no boundary region: nothing to get wrong
    assert biou_dilation(1152, 2048) == 47
    assert mba_radii(1152, 2048) == [1, 2, 4, 6, 8]


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8, 13])
def test_morphology_torch_equals_opencv(radius):
    rng = np.random.default_rng(radius)
    for shape in [(1, 7), (9, 1), (23, 31), (40, 17)]:
        mask = torch.from_numpy(rng.random((2, *shape)) < 0.3)
        mask_u8 = mask.numpy().astype(np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        expected = np.stack([cv2.morphologyEx(m, cv2.MORPH_GRADIENT, kernel) > 0 for m in mask_u8])
        for opencv in (True, False):
            assert np.array_equal(elliptic_gradient(mask, radius, opencv=opencv).numpy(), expected)
        square = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        eroded = np.stack([cv2.erode(m, square, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0 for m in mask_u8])
        dilated = np.stack([cv2.dilate(m, square) > 0 for m in mask_u8])
        for opencv in (True, False):
            assert np.array_equal(erode_square(mask, radius, opencv=opencv).numpy(), eroded)
            assert np.array_equal(dilate_square(mask, radius, opencv=opencv).numpy(), dilated)


# ----------------------------------------------------------------------------- distances


@pytest.mark.parametrize("density", [0.002, 0.05, 0.5])
def test_distances_and_nearest_pixels_match_scipy(density):
    rng = np.random.default_rng(int(density * 1000))
    foreground = rng.random((45, 70)) < density
    foreground[0, 0] = True
    distance, (near_rows, near_cols) = distance_transform_edt(~foreground, return_indices=True)
    for opencv in (True, False):
        ours = distance_to_foreground(torch.from_numpy(foreground), cap=30, opencv=opencv).numpy()
        within = distance <= 30
        np.testing.assert_allclose(ours[within], distance[within], rtol=1e-15, atol=0)
        assert np.isinf(ours[~within]).all()
        rows, cols, nearest_rows, nearest_cols = nearest_foreground_near_boundary(
            torch.from_numpy(foreground), 3, opencv=opencv
        )
        band = cv2.dilate(foreground.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~foreground
        assert np.array_equal(np.sort(np.ravel_multi_index((rows.numpy(), cols.numpy()), band.shape)),
                              np.flatnonzero(band))
        assert np.array_equal(nearest_rows.numpy(), near_rows[rows.numpy(), cols.numpy()])  # scipy's tie-breaks
        assert np.array_equal(nearest_cols.numpy(), near_cols[rows.numpy(), cols.numpy()])


# ----------------------------------------------------------------------------- API


def test_inputs_quantise_and_binarise_like_files():
    pred = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 0.999, 1.0, 2.0])
    assert quantize_prediction(pred).tolist() == [0, 0, 2, 255, 255, 255]
    assert binarize_ground_truth(np.array([128, 129], np.uint8)).tolist() == [False, True]
    as_float = torch.tensor([128, 129], dtype=torch.uint8).float() / 255
    assert binarize_ground_truth(as_float).tolist() == [False, True]
    with pytest.raises(ValueError, match="NaN"):
        quantize_prediction(torch.tensor([math.nan]))


def test_api_errors_and_metric_selection():
    suite = SODMetrics(["maxFm", "MAE"])
    assert suite.keys == ("MAE", "adpFm", "meanFm", "maxFm")
    with pytest.raises(RuntimeError, match="no images"):
        suite.compute()
    with pytest.raises(ValueError, match="does not match"):
        suite.update(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown metric 'Fbeta'"):
        SODMetrics(["Fbeta"])
    suite.update(np.full((4, 5), 200, np.uint8), np.full((4, 5), 255, np.uint8))
    assert set(suite.compute()) == set(suite.keys)
    assert "em" not in suite.curves() and "precision" in suite.curves()
    suite.reset()
    assert suite.num_images == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_results():
    cpu, cuda = SODMetrics(), SODMetrics(device="cuda")
    for pred, gt in CASES[::5] + boundary_cases()[::4]:
        cpu.update(pred, gt)
        cuda.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
    for key, value in cpu.compute().items():
        # rel: a 1×1 case makes E-measure ~1e14, as in pysodmetrics (it divides by gt_size - 1 + eps)
        assert cuda.compute()[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert cuda.state() and all(state.device.type == "cuda" for state in cuda.state().values())
