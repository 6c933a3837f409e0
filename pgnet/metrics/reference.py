"""pysodmetrics (1.6) behind the ``SODMetrics`` interface: the reference the tests and the speed
benchmark compare against. Needs the ``pysodmetrics`` package (a test dependency, not a runtime one)."""

from __future__ import annotations

import warnings

import numpy as np


class PySODReference:
    """pysodmetrics' MAE, S-measure, E-measure, F-measure and weighted F-measure, keyed like ``SODMetrics``.

    ``update(pred, gt)`` takes uint8 H×W arrays as pysodmetrics does; its warnings on NaN cases are muted.
    """

    def __init__(self) -> None:
        import py_sod_metrics

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fm = py_sod_metrics.Fmeasure()
        self.em = py_sod_metrics.Emeasure()
        self.sm = py_sod_metrics.Smeasure()
        self.wfm = py_sod_metrics.WeightedFmeasure()
        self.mae = py_sod_metrics.MAE()

    def update(self, pred: np.ndarray, gt: np.ndarray) -> PySODReference:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for metric in (self.fm, self.em, self.sm, self.wfm, self.mae):
                metric.step(pred, gt)
        return self

    def compute(self) -> dict[str, float]:
        fm, em = self.fm.get_results()["fm"], self.em.get_results()["em"]
        return {
            "MAE": float(self.mae.get_results()["mae"]),
            "Sm": float(self.sm.get_results()["sm"]),
            "adpEm": float(em["adp"]),
            "meanEm": float(em["curve"].mean()),
            "maxEm": float(em["curve"].max()),
            "adpFm": float(fm["adp"]),
            "meanFm": float(fm["curve"].mean()),
            "maxFm": float(fm["curve"].max()),
            "wFm": float(self.wfm.get_results()["wfm"]),
        }

    def curves(self) -> dict[str, np.ndarray]:
        """Mean curves over 256 thresholds (255 down to 0), as ``SODMetrics.curves``."""
        results = self.fm.get_results()
        return {"precision": results["pr"]["p"], "recall": results["pr"]["r"], "fm": results["fm"]["curve"],
                "em": self.em.get_results()["em"]["curve"]}
