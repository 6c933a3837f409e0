"""Human Correction Effort (HCE), the DIS5K measure of Qin et al., "Highly Accurate Dichotomous Image
Segmentation" (ECCV 2022), as pysodmetrics 1.6 computes it (``HumanCorrectionEffortMeasure``, the
IS-Net evaluation code): the number of mouse clicks a person would need to fix a prediction.

Definition (relax ``r = 5`` iterations of OpenCV's 3×3 cross, polygon tolerance ``ε = 2``):

1. The prediction is min-max normalised as every pysodmetrics measure does (``v / 255``, then
   ``(p - min) / (max - min)`` unless constant) and binarised at ``> 0.5``; the mask is ``> 128``.
2. False positives and false negatives are *relaxed*: only the parts inside the union of mask and
   prediction eroded ``r`` times, regrown ``r`` times (dilated, kept off the mask for FP, off the
   prediction for FN), count; thin structures of the mask the prediction misses (its skeleton, Zhang–
   Suen thinning as scikit-image's ``skeletonize``) are always false negatives.
3. The boundaries of the relaxed FP (FN) regions that touch true positives or false negatives (the
   rest of the image) are the edits: each boundary run costs the vertices of its Ramer–Douglas–
   Peucker approximation (``cv2.approxPolyDP``, ``ε``, open), each region without such a boundary
   costs one click. HCE is the sum; lower is better; the dataset value is the mean over images.

Everything here is NumPy and OpenCV; the tests check it equal to pysodmetrics (which needs
scikit-image) on many masks, empty and full ones included. The thinning is vectorised over the
pixels on the objects' current boundary only, so its cost follows the outlines, not the areas.
"""

from __future__ import annotations

import cv2
import numpy as np

HCE_RELAX = 5
HCE_EPSILON = 2.0

# Zhang–Suen thinning as scikit-image (BSD-3-Clause) implements it: a pixel whose 8 neighbours, read as
# bits NW=1, N=2, NE=4, E=8, SE=16, S=32, SW=64, W=128, give code c is removed in the first
# sub-iteration when the table holds 1 or 3 at c, in the second when it holds 2 or 3. The table is
# scikit-image's (it differs from the paper's conditions in a few dozen patterns), written here as a
# 256-digit string; the tests compare the skeletons with skimage's on many masks.
_ZHANG_SUEN_TABLE = (
    "0001001300311013000000002020303300000000300000000000000020003022"
    "0000000000000000000000000000000020000000200020003000000030003020"
    "0031001300000001000000000000000131000000000000002000000000000000"
    "2313001300000001000000000000000023010001000000003301000022002000"
)
_TABLE = np.frombuffer(_ZHANG_SUEN_TABLE.encode(), np.uint8) - ord("0")
_REMOVE_FIRST = (_TABLE == 1) | (_TABLE == 3)
_REMOVE_SECOND = (_TABLE == 2) | (_TABLE == 3)
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # skimage's disk(1)


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """Zhang–Suen skeleton of a bool H×W mask, equal to ``skimage.morphology.skeletonize``.

    Each sub-iteration reads every pixel's neighbourhood before removing any (the parallel algorithm);
    only pixels with a background neighbour can be removed (the table is 0 for a full neighbourhood),
    so only those are looked at: the objects' boundary at the start, then the set neighbours of every
    removed pixel. The outside of the image is background.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"skeletonize expects an H×W mask, got shape {mask.shape}")
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    stride = width + 2
    offsets = np.array([-stride - 1, -stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1], np.int64)
    flat = padded.reshape(-1)
    interior = cv2.erode(padded, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    active = np.flatnonzero(padded & ~interior)  # set pixels with a background neighbour
    is_active = np.zeros(flat.size, bool)
    is_active[active] = True
    slot = np.zeros(flat.size, np.int64)  # scratch for removing repeated indices
    removed_any = active.size > 0
    while removed_any:
        removed_any = False
        for removable in (_REMOVE_FIRST, _REMOVE_SECOND):
            if active.size == 0:
                break
            codes = np.zeros(active.shape, np.uint8)
            for bit, offset in enumerate(offsets):
                codes |= flat[active + offset] << bit
            remove = removable[codes]
            if not remove.any():
                continue
            removed = active[remove]
            flat[removed] = 0
            is_active[removed] = False
            removed_any = True
            neighbours = (removed[:, None] + offsets[None, :]).reshape(-1)
            neighbours = neighbours[(flat[neighbours] != 0) & ~is_active[neighbours]]
            order = np.arange(neighbours.size)
            slot[neighbours] = order
            neighbours = neighbours[slot[neighbours] == order]  # each pixel once
            is_active[neighbours] = True
            active = np.concatenate([active[~remove], neighbours])
    return padded[1:-1, 1:-1].astype(bool)


def binarize_prediction(pred: np.ndarray) -> np.ndarray:
    """A uint8 prediction as pysodmetrics' HCE binarises it: ``v / 255``, min-max normalised unless
    constant, ``> 0.5``; the comparison is made per 8-bit level with pysodmetrics' float64 operations."""
    levels = np.arange(256) / 255
    low, high = pred.min() / 255, pred.max() / 255
    if high != low:
        levels = (levels - low) / (high - low)
    return (levels > 0.5)[pred]


def _boundary_runs(contours: tuple[np.ndarray, ...], condition: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The contour runs to edit and the (row, col) of every point kept in them.

    A contour point is kept where the dilated ``condition`` holds and the pixel was not kept before (by
    an earlier point of this contour or an earlier contour); consecutive kept points of one contour
    form a run; when a contour has several runs and its first run starts next to (8-adjacent) where
    its last run ends, the first run, reversed, is appended to the last.
    """
    if not contours:
        return [], np.empty((0, 2), np.int64)
    lengths = np.array([len(contour) for contour in contours])
    points = np.concatenate([contour.reshape(-1, 2) for contour in contours]).astype(np.int64)  # (x, y)
    rows, cols = points[:, 1], points[:, 0]
    wanted = condition[rows, cols] != 0
    linear = rows * condition.shape[1] + cols
    first = np.zeros(len(points), bool)  # first occurrence of each pixel among the wanted points
    _, first_index = np.unique(np.where(wanted, linear, -1 - np.arange(len(points))), return_index=True)
    first[first_index] = True
    kept = wanted & first
    runs: list[np.ndarray] = []
    start = 0
    for length in lengths:
        contour_kept = kept[start : start + length]
        if contour_kept.any():
            edges = np.diff(np.concatenate([[0], contour_kept.view(np.int8), [0]]))
            begins, ends = np.flatnonzero(edges == 1) + start, np.flatnonzero(edges == -1) + start
            pieces = [points[b:e] for b, e in zip(begins, ends)]
            if len(pieces) > 1:
                gap = np.abs(pieces[0][0] - pieces[-1][-1])
                if gap.max() == 1:  # 8-adjacent, not the same pixel
                    pieces[-1] = np.concatenate([pieces[-1], pieces[0][::-1]])
                    del pieces[0]
            runs += pieces
        start += length
    return runs, np.stack([rows[kept], cols[kept]], 1)


def _edits(region: np.ndarray, condition: np.ndarray, epsilon: float) -> int:
    """Clicks to fix the bool ``region``: polygon vertices of its boundary runs next to ``condition``
    (dilated by the cross), plus one per 8-connected part with no such run."""
    if not region.any():
        return 0
    region_u8 = region.astype(np.uint8)
    contours, _ = cv2.findContours(region_u8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    near = cv2.dilate(condition.astype(np.uint8), _CROSS)
    runs, kept = _boundary_runs(contours, near)
    count, labels = cv2.connectedComponents(region_u8, connectivity=8)
    touched = np.unique(labels[kept[:, 0], kept[:, 1]]) if len(kept) else np.empty(0, np.int64)
    independent = (count - 1) - int(np.count_nonzero(touched))
    vertices = sum(len(cv2.approxPolyDP(run.reshape(-1, 1, 2).astype(np.int32), epsilon, False)) for run in runs)
    return vertices + independent


def human_correction_effort(pred: np.ndarray, gt: np.ndarray, relax: int = HCE_RELAX,
                            epsilon: float = HCE_EPSILON) -> int:
    """HCE of a uint8 H×W prediction against a bool H×W mask (the module docstring has the definition)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt, dtype=bool)
    if pred.dtype != np.uint8:
        raise TypeError(f"HCE expects a uint8 prediction, got {pred.dtype}")
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"HCE expects H×W prediction and mask of one shape, got {pred.shape} and {gt.shape}")
    positive = binarize_prediction(pred)
    skeleton = skeletonize(gt)
    true_pos = gt & positive
    false_pos = positive & ~gt
    false_neg = gt & ~positive
    eroded_union = cv2.erode((gt | positive).astype(np.uint8), _CROSS, iterations=relax).astype(bool)

    relaxed_fp = false_pos & eroded_union
    for _ in range(relax):
        relaxed_fp = cv2.dilate(relaxed_fp.astype(np.uint8), _CROSS).astype(bool) & ~gt
    relaxed_fp &= false_pos

    relaxed_fn = false_neg & eroded_union
    for _ in range(relax):
        relaxed_fn = cv2.dilate(relaxed_fn.astype(np.uint8), _CROSS).astype(bool) & ~positive
    relaxed_fn &= false_neg
    relaxed_fn |= skeleton & ~true_pos  # thin structures missed by the prediction

    fp_edits = _edits(relaxed_fp, true_pos | relaxed_fn, epsilon)
    fn_edits = _edits(relaxed_fn, ~(true_pos | relaxed_fp | relaxed_fn), epsilon)
    return fp_edits + fn_edits
