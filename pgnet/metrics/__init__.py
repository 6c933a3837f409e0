"""Salient object detection metrics in torch, identical to pysodmetrics 1.6 where it has them.

- ``SODMetrics(metrics=ALL_METRICS, device=None)``: streaming suite; ``update(pred, gt)`` (batched;
  returns per-image values), ``compute()`` -> {MAE, Sm, adpEm, meanEm, maxEm, adpFm, meanFm, maxFm,
  wFm, BIoU, mBA} (and HCE when asked for: ``OPTIONAL_METRICS``), ``curves()`` -> precision/recall/F/E
  over 256 thresholds, ``reset()``.
- ``quantize_prediction(pred)``: float [0, 1] -> uint8 as an 8-bit PNG stores it.
- ``binarize_ground_truth(gt)``: mask -> bool foreground (> 128 on the 0..255 scale).
- Per-image building blocks: ``pgnet.metrics.histogram`` (MAE, F/E-measure counts), ``.structure``
  (S-measure), ``.weighted_f``, ``.boundary`` (BIoU, mBA), ``.hce`` (DIS5K's human correction effort,
  NumPy/OpenCV), ``.distance``, ``.morphology``. Tables and plots are ``pgnet.evaluation.report``'s.

Everything runs in torch on the tensors' device; on the CPU, distance transforms, morphology, the
blur and the histograms go through OpenCV (same results, several times faster; ``opencv=False``
turns that off). Differences from pysodmetrics, all in degenerate cases: an S-measure quadrant with
no pixels (the foreground centroid on the last row or column) contributes 0 where pysodmetrics
returns NaN; the adaptive threshold ``2·mean`` is compared exactly, so a value equal to it within
float rounding may binarise differently.
"""

from pgnet.metrics.inputs import binarize_ground_truth, prepare_batch, quantize_prediction
from pgnet.metrics.suite import (
    ALL_METRICS,
    LOWER_IS_BETTER,
    METRIC_GROUPS,
    OPTIONAL_METRICS,
    SOD_METRICS,
    SODMetrics,
    resolve_metric_groups,
)

__all__ = [
    "ALL_METRICS",
    "LOWER_IS_BETTER",
    "METRIC_GROUPS",
    "OPTIONAL_METRICS",
    "SOD_METRICS",
    "SODMetrics",
    "binarize_ground_truth",
    "prepare_batch",
    "quantize_prediction",
    "resolve_metric_groups",
]
