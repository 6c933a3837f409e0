"""Evaluation reports: result tables (terminal, Markdown, CSV, JSON) and per-dataset curve plots.

``EvaluationReport`` collects one entry per (dataset, method) and rewrites every file each time a
dataset is finished (``write()``), atomically, so an interrupted evaluation keeps all finished
datasets. Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgnet.metrics.suite import ALL_METRICS, LOWER_IS_BETTER, METRIC_GROUPS
from pgnet.writing import atomic_write, write_text


@dataclass
class MethodResult:
    """One method on one dataset: its metric values, curves (None without F-measure) and notes."""

    dataset: str
    method: str
    metrics: dict[str, float]
    num_images: int
    curves: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def metric_columns(results: Iterable[MethodResult]) -> list[str]:
    """The metric keys present in ``results``, in the suite's table order."""
    present = {key for result in results for key in result.metrics}
    order = [key for group in ALL_METRICS for key in METRIC_GROUPS[group]]
    return [key for key in order if key in present] + sorted(present - set(order))


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_table(results: Sequence[MethodResult], markdown: bool = True) -> str:
    """A table with one row per (dataset, method); the best value per dataset and metric is bold in
    Markdown (when several methods are compared)."""
    columns = metric_columns(results)
    header = ["Dataset", "Method", "Images", *columns]
    rows = []
    for result in results:
        cells = [_cell(result.metrics.get(key)) for key in columns]
        if markdown:
            rivals = [r for r in results if r.dataset == result.dataset]
            for index, key in enumerate(columns):
                values = [r.metrics[key] for r in rivals if key in r.metrics and not math.isnan(r.metrics[key])]
                if len(values) > 1 and key in result.metrics:
                    best = min(values) if key in LOWER_IS_BETTER else max(values)
                    if f"{result.metrics[key]:.4f}" == f"{best:.4f}":
                        cells[index] = f"**{cells[index]}**"
        rows.append([result.dataset, result.method, str(result.num_images), *cells])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) if i < 2 else text.rjust(width)
                       for i, (text, width) in enumerate(zip(line, widths))) for line in [header, *rows]]
    return "\n".join(lines) + "\n"


def format_csv(results: Sequence[MethodResult]) -> str:
    columns = metric_columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "images", *columns])
    for result in results:
        writer.writerow([result.dataset, result.method, result.num_images,
                         *[repr(result.metrics[key]) if key in result.metrics else "" for key in columns]])
    return buffer.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_json(results: Sequence[MethodResult], meta: Mapping[str, Any] | None = None) -> str:
    """``{"meta": ..., "results": {dataset: {method: {images, metrics, notes, curves}}}}``."""
    tree: dict[str, dict[str, Any]] = {}
    for result in results:
        entry: dict[str, Any] = {
            "images": result.num_images,
            "metrics": {key: _jsonable(value) for key, value in result.metrics.items()},
        }
        if result.notes:
            entry["notes"] = list(result.notes)
        if result.curves is not None:
            entry["curves"] = {name: _jsonable(curve) for name, curve in result.curves.items()}
        tree.setdefault(result.dataset, {})[result.method] = entry
    return json.dumps({"meta": dict(meta or {}), "results": tree}, indent=1) + "\n"


def safe_filename(name: str) -> str:
    """``name`` usable as a file name (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def plot_curves(results: Sequence[MethodResult], dataset: str, folder: Path) -> list[Path]:
    """PR curves and F-measure-versus-threshold curves of every method on ``dataset`` as PNGs
    ``folder/<dataset>_pr.png`` and ``folder/<dataset>_fm.png``; returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [(r.method, r.curves) for r in results if r.dataset == dataset and r.curves and "fm" in r.curves]
    if not curves:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    stem = safe_filename(dataset)
    for kind in ("pr", "fm"):
        figure = Figure(figsize=(5.5, 4.5), dpi=120)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for method, curve in curves:
            if kind == "pr":
                axes.plot(curve["recall"], curve["precision"], label=method, linewidth=1.5)
            else:
                axes.plot(curve["threshold"], curve["fm"], label=f"{method} (max {curve['fm'].max():.3f})",
                          linewidth=1.5)
        if kind == "pr":
            axes.set(xlabel="Recall", ylabel="Precision", title=f"{dataset}: precision-recall",
                     xlim=(0, 1), ylim=(0, 1.01))
        else:
            axes.set(xlabel="Threshold", ylabel="F-measure", title=f"{dataset}: F-measure by threshold",
                     xlim=(0, 255), ylim=(0, 1.01))
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left" if kind == "pr" else "lower center", fontsize="small")
        figure.tight_layout()
        path = folder / f"{stem}_{kind}.png"
        atomic_write(path, lambda stream, figure=figure: figure.savefig(stream, format="png"))
        written.append(path)
    return written


class EvaluationReport:
    """Results of an evaluation, written to ``folder`` as ``results.md``, ``results.csv``,
    ``results.json`` and ``plots/<dataset>_{pr,fm}.png``."""

    def __init__(self, folder: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.meta = dict(meta or {})
        self.results: list[MethodResult] = []

    def add(self, result: MethodResult) -> None:
        self.results = [r for r in self.results if (r.dataset, r.method) != (result.dataset, result.method)]
        self.results.append(result)

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.results))

    def write(self, plot_dataset: str | None = None) -> list[Path]:
        """Rewrite the tables (and the plots of ``plot_dataset``); returns the files written."""
        written = []
        for name, text in (("results.md", format_table(self.results)), ("results.csv", format_csv(self.results)),
                           ("results.json", format_json(self.results, self.meta))):
            write_text(self.folder / name, text)
            written.append(self.folder / name)
        if plot_dataset is not None:
            written += plot_curves(self.results, plot_dataset, self.folder / "plots")
        return written
