"""``SODMetrics``: streaming accumulation of the whole metric suite over a test set."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from pgnet.errors import UnknownNameError, UserError
from pgnet.metrics.boundary import BIOU_DILATION_RATIO, MBA_STEPS, boundary_iou, mean_boundary_accuracy
from pgnet.metrics.hce import HCE_EPSILON, HCE_RELAX, human_correction_effort
from pgnet.metrics.histogram import (
    NUM_LEVELS,
    adaptive_counts,
    adaptive_fmeasure,
    emeasure_from_counts,
    fmeasure_from_counts,
    joint_histogram,
    mean_absolute_error,
    threshold_counts,
)
from pgnet.metrics.inputs import ArrayLike, prepare_batch
from pgnet.metrics.structure import smeasure
from pgnet.metrics.weighted_f import weighted_fmeasure

# Metric groups and the result keys each produces, in table order.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "MAE": ("MAE",),
    "Sm": ("Sm",),
    "Em": ("adpEm", "meanEm", "maxEm"),
    "Fm": ("adpFm", "meanFm", "maxFm"),
    "wFm": ("wFm",),
    "BIoU": ("BIoU",),
    "mBA": ("mBA",),
    "HCE": ("HCE",),
}
# Computed only when asked for (``--metrics default HCE``) and by default on the datasets that report
# them (DIS5K's HCE): thinning and contour tracing on the CPU, image by image, far slower than the rest.
OPTIONAL_METRICS: tuple[str, ...] = ("HCE",)
ALL_METRICS: tuple[str, ...] = tuple(group for group in METRIC_GROUPS if group not in OPTIONAL_METRICS)  # the default
SOD_METRICS: tuple[str, ...] = ("MAE", "Sm", "Em", "Fm", "wFm")  # the pysodmetrics set
LOWER_IS_BETTER = frozenset({"MAE", "HCE"})
DEFAULT_ALIAS = "default"  # names ALL_METRICS in a metric list
_KEY_TO_GROUP = {key: group for group, keys in METRIC_GROUPS.items() for key in keys}
_CURVE_NAMES = ("precision", "recall", "fm", "em")
_STATE_STORES = ("_sums", "_curve_sums", "_pixel_sums")  # SODMetrics' accumulated sums, by kind


def resolve_metric_groups(metrics: Iterable[str]) -> tuple[str, ...]:
    """Metric groups named by group (``Fm``), result key (``maxFm``) or ``default`` (every group
    computed by default: ``default HCE`` adds HCE to them), in canonical order."""
    groups = set()
    for name in metrics:
        if name == DEFAULT_ALIAS:
            groups.update(ALL_METRICS)
        elif name in METRIC_GROUPS:
            groups.add(name)
        elif name in _KEY_TO_GROUP:
            groups.add(_KEY_TO_GROUP[name])
        else:
            known = ", ".join(dict.fromkeys([DEFAULT_ALIAS, *METRIC_GROUPS, *_KEY_TO_GROUP]))
            raise UnknownNameError(f"unknown metric {name!r}; known: {known}")
    return tuple(group for group in METRIC_GROUPS if group in groups)


class SODMetrics:
    """Salient object detection metrics, identical to pysodmetrics 1.6 where it has them.

    ``update(pred, gt)`` takes a prediction (float in [0, 1], uint8 0..255 or bool; H×W, B×H×W or
    B×1×H×W, at the mask's size) and a mask (uint8 0..255, float in [0, 1] or bool); float
    predictions are quantised to 8 bits as a PNG would store them. The state is a few sums and
    256-entry curves, so a test set is never held in memory. ``compute()`` returns the dataset
    values: means over images, and for the curve metrics the max and mean of the mean curve.
    ``HCE`` (DIS5K's human correction effort, ``pgnet.metrics.hce``) is not in the default groups; it
    always runs on the CPU, image by image.

    Computation runs on ``device`` (None: wherever each prediction lives); the state lives there too.
    On the CPU a few kernels (histograms, distance transform, morphology, blur) run in OpenCV unless
    ``opencv`` is False; the results are the same either way.
    """

    def __init__(
        self,
        metrics: Iterable[str] = ALL_METRICS,
        device: torch.device | str | None = None,
        *,
        sm_alpha: float = 0.5,
        fm_beta2: float = 0.3,
        wfm_beta: float = 1.0,
        biou_dilation_ratio: float = BIOU_DILATION_RATIO,
        mba_steps: int = MBA_STEPS,
        hce_relax: int = HCE_RELAX,
        hce_epsilon: float = HCE_EPSILON,
        opencv: bool | None = None,
    ) -> None:
        self.groups = resolve_metric_groups(metrics)
        if not self.groups:
            raise UserError("no metrics selected")
        self.device = torch.device(device) if device is not None else None
        self.sm_alpha = sm_alpha
        self.fm_beta2 = fm_beta2
        self.wfm_beta = wfm_beta
        self.biou_dilation_ratio = biou_dilation_ratio
        self.mba_steps = mba_steps
        self.hce_relax = hce_relax
        self.hce_epsilon = hce_epsilon
        self.opencv = opencv
        self.reset()

    @property
    def keys(self) -> tuple[str, ...]:
        """Result keys of ``compute()``, in table order."""
        return tuple(key for group in self.groups for key in METRIC_GROUPS[group])

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.num_images = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._curve_sums: dict[str, torch.Tensor] = {}
        self._pixel_sums: dict[str, torch.Tensor] = {}

    def _accumulate(self, store: dict[str, torch.Tensor], name: str, values: torch.Tensor) -> None:
        total = values.sum(0)
        if name in store:
            store[name] += total.to(store[name].device)
        else:
            store[name] = total.clone()

    @torch.no_grad()
    def update(self, pred: ArrayLike, gt: ArrayLike) -> dict[str, torch.Tensor]:
        """Add a batch; returns its per-image values, (B,) float64 each, for the scalar metrics."""
        device = self.device
        if device is None and self._sums:
            device = next(iter(self._sums.values())).device
        pred_u8, gt_bool = prepare_batch(pred, gt, device)
        per_image: dict[str, torch.Tensor] = {}
        groups = set(self.groups)

        if groups & {"MAE", "Sm", "Em", "Fm", "wFm"}:
            hist = joint_histogram(pred_u8, gt_bool, opencv=self.opencv)
            num_fg = hist.num_foreground
            if "MAE" in groups:
                per_image["MAE"] = mean_absolute_error(hist)
            if "Sm" in groups:
                per_image["Sm"] = smeasure(hist, self.sm_alpha)
            if groups & {"Em", "Fm"}:
                true_pos, false_pos = threshold_counts(hist)
                adp_true_pos, adp_false_pos = adaptive_counts(hist)
            if "Em" in groups:
                per_image["adpEm"] = emeasure_from_counts(adp_true_pos, adp_false_pos, num_fg, hist.num_pixels)[:, 0]
                self._accumulate(self._curve_sums, "em",
                                 emeasure_from_counts(true_pos, false_pos, num_fg, hist.num_pixels))
            if "Fm" in groups:
                per_image["adpFm"] = adaptive_fmeasure(adp_true_pos, adp_false_pos, num_fg, self.fm_beta2)
                precision, recall, fmeasure = fmeasure_from_counts(true_pos, false_pos, num_fg, self.fm_beta2)
                self._accumulate(self._curve_sums, "precision", precision)
                self._accumulate(self._curve_sums, "recall", recall)
                self._accumulate(self._curve_sums, "fm", fmeasure)
                self._accumulate(self._pixel_sums, "true_pos", true_pos)
                self._accumulate(self._pixel_sums, "false_pos", false_pos)
                self._accumulate(self._pixel_sums, "foreground", num_fg.double())
                self._accumulate(self._pixel_sums, "pixels", torch.full_like(num_fg, hist.num_pixels))
        if "wFm" in groups:
            per_image["wFm"] = weighted_fmeasure(pred_u8, gt_bool, hist, self.wfm_beta, opencv=self.opencv)
        if "BIoU" in groups:
            per_image["BIoU"] = boundary_iou(pred_u8, gt_bool, self.biou_dilation_ratio, opencv=self.opencv)
        if "mBA" in groups:
            per_image["mBA"] = mean_boundary_accuracy(pred_u8, gt_bool, self.mba_steps, opencv=self.opencv)
        if "HCE" in groups:  # NumPy and OpenCV on the CPU, image by image
            preds, masks = pred_u8.cpu().numpy(), gt_bool.cpu().numpy()
            per_image["HCE"] = torch.tensor(
                [float(human_correction_effort(p, g, self.hce_relax, self.hce_epsilon)) for p, g in zip(preds, masks)],
                dtype=torch.float64, device=pred_u8.device)

        for name, values in per_image.items():
            self._accumulate(self._sums, name, values)
        self.num_images += pred_u8.shape[0]
        return per_image

    def state(self) -> dict[str, torch.Tensor]:
        """The accumulated sums by name: the scalar metrics', the curves' and (with ``Fm``) the pixel
        counts', on the device the metrics were computed on; empty before any update."""
        return {**self._sums, **self._curve_sums, **self._pixel_sums}

    def state_dict(self) -> dict:
        """What :meth:`merge` adds to another accumulation: the image count, the metric groups and
        the sums (float64, on the CPU, so it pickles between processes)."""
        return {"num_images": self.num_images, "groups": self.groups,
                **{store: {name: value.detach().cpu() for name, value in getattr(self, store).items()}
                   for store in _STATE_STORES}}

    def merge(self, state: dict) -> None:
        """Add another accumulation's :meth:`state_dict` (e.g. another process's share of a test set)
        to this one's. The sums are float64 added in another order, so the merged values equal one
        accumulation over every image to float64 rounding (relative ~1e-16), not always bit for bit."""
        if tuple(state["groups"]) != self.groups:
            raise ValueError(f"cannot merge metrics of groups {list(state['groups'])} into {list(self.groups)}")
        for store in _STATE_STORES:
            for name, value in state[store].items():
                self._accumulate(getattr(self, store), name, value.to(self.device or value.device).unsqueeze(0))
        self.num_images += int(state["num_images"])

    def compute(self) -> dict[str, float]:
        """Dataset values, keyed as :attr:`keys`; raises RuntimeError before any update."""
        if self.num_images == 0:
            raise RuntimeError("no images: call update() before compute()")
        count = self.num_images
        results: dict[str, float] = {}
        for key in self.keys:
            if key in self._sums:
                results[key] = float(self._sums[key]) / count
            elif key in ("meanEm", "maxEm"):
                curve = self._curve_sums["em"] / count
                results[key] = float(curve.mean() if key == "meanEm" else curve.max())
            elif key in ("meanFm", "maxFm"):
                curve = self._curve_sums["fm"] / count
                results[key] = float(curve.mean() if key == "meanFm" else curve.max())
        return results

    def curves(self) -> dict[str, np.ndarray]:
        """Mean curves over 256 thresholds, for plots: ``threshold`` (255 down to 0) and, as measured,
        ``precision``, ``recall``, ``fm`` (F-measure) and ``em`` (E-measure), float64 each."""
        if self.num_images == 0:
            raise RuntimeError("no images: call update() before curves()")
        curves = {"threshold": np.arange(NUM_LEVELS - 1, -1, -1)}
        for name in _CURVE_NAMES:
            if name in self._curve_sums:
                curves[name] = (self._curve_sums[name] / self.num_images).cpu().numpy()
        return curves

    def pixel_counts(self) -> dict[str, np.ndarray]:
        """Pixels summed over every image at the 256 thresholds of :meth:`curves` (255 down to 0):
        ``true_pos``, ``false_pos``, ``true_neg``, ``false_neg`` (int64 each); empty without ``Fm``."""
        if "true_pos" not in self._pixel_sums:
            return {}
        sums = {name: value.cpu().double() for name, value in self._pixel_sums.items()}
        counts = {
            "true_pos": sums["true_pos"],
            "false_pos": sums["false_pos"],
            "false_neg": sums["foreground"] - sums["true_pos"],
            "true_neg": sums["pixels"] - sums["foreground"] - sums["false_pos"],
        }
        return {name: value.round().long().numpy() for name, value in counts.items()}
