"""Evaluation reports: result tables (terminal, Markdown, CSV, JSON, LaTeX, XLSX) and per-dataset curves.

``EvaluationReport`` collects one entry per (dataset, method), with the published references to put
beside them, and rewrites every file each time a dataset is finished (``write()``), each atomically
(``pgnet.writing``), so an interrupted evaluation keeps all finished datasets. The tables are laid out
once (``pgnet.evaluation.tables.build_rows``) and every format writes those rows, with the footnote of
``protocol_notes``. Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed):
precision-recall, F-measure by threshold and E-measure by threshold, a method keeping its colour and
line style across datasets, the legend outside the axes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgnet.evaluation.references import Reference
from pgnet.evaluation.tables import (
    DELTA,
    REFERENCE,
    Row,
    build_rows,
    format_csv,
    format_latex,
    format_markdown,
    format_text,
    metric_columns,
    protocol_notes,
    write_xlsx,
)
from pgnet.writing import atomic_write, write_text

TABLE_FILES = ("results.md", "results.csv", "results.json", "results.tex", "results.xlsx")
CURVE_KINDS = ("pr", "fm", "em")  # plots/<dataset>_<kind>.png
_LINE_STYLES = ("-", "--", "-.", ":")

__all__ = [
    "CURVE_KINDS",
    "TABLE_FILES",
    "EvaluationReport",
    "MethodResult",
    "format_json",
    "format_table",
    "metric_columns",
    "plot_curves",
    "safe_filename",
]


@dataclass
class MethodResult:
    """One method on one dataset: its metric values, curves (None without F- or E-measure) and notes."""

    dataset: str
    method: str
    metrics: dict[str, float]
    num_images: int
    curves: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def format_table(results: Sequence[MethodResult], markdown: bool = True, references: Sequence[Reference] = (),
                 notes: Sequence[str] = ()) -> str:
    """A table with one row per (dataset, method), then the references' rows and the Δ rows; the best
    value per dataset and metric is bold in Markdown (when several rows compete)."""
    rows = build_rows(results, references)
    return format_markdown(rows, notes) if markdown else format_text(rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_json(results: Sequence[MethodResult], meta: Mapping[str, Any] | None = None,
                references: Sequence[Reference] = (), notes: Sequence[str] = ()) -> str:
    """``{"meta", "results": {dataset: {method: {images, metrics, notes, curves}}}, "references":
    {key: {method, source, training, scores}}, "differences": {dataset: {method: {against, metrics}}},
    "notes"}`` (the last three only with references / notes)."""
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
    document: dict[str, Any] = {"meta": dict(meta or {}), "results": tree}
    if references:
        document["references"] = {
            reference.key: {"method": reference.method, "source": reference.source, "training": reference.training,
                            "scores": reference.scores} for reference in references}
        differences: dict[str, dict[str, Any]] = {}
        for row in build_rows(results, references):
            if row.kind == DELTA:
                differences.setdefault(row.dataset, {})[row.of] = {
                    "against": row.against, "metrics": {key: _jsonable(value) for key, value in row.values.items()}}
        document["differences"] = differences
    if notes:
        document["notes"] = list(notes)
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def safe_filename(name: str) -> str:
    """``name`` usable as a file name (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour and line style per method, from its position in ``methods``: matplotlib's ten
    ``tab10`` colours, then the same colours dashed, dash-dotted and dotted (40 distinct lines)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {method: {"color": palette[index % 10], "linestyle": _LINE_STYLES[(index // 10) % len(_LINE_STYLES)]}
            for index, method in enumerate(methods)}


def plot_curves(results: Sequence[MethodResult], dataset: str, folder: Path,
                methods: Sequence[str] | None = None) -> list[Path]:
    """The curves of every method on ``dataset`` as PNGs: ``folder/<dataset>_pr.png`` (precision-recall),
    ``_fm.png`` (F-measure by threshold) and ``_em.png`` (E-measure by threshold), each drawn when some
    method has its curve; returns the files written. ``methods`` fixes each method's colour and line
    style (default: their order in ``results``), so one method looks the same on every dataset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [(r.method, r.curves) for r in results if r.dataset == dataset and r.curves]
    if not curves:
        return []
    styles = method_styles(list(methods) if methods is not None else list(dict.fromkeys(r.method for r in results)))
    written = []
    stem = safe_filename(dataset)
    for kind in CURVE_KINDS:
        needed = "em" if kind == "em" else "fm"
        drawn = [(method, curve) for method, curve in curves if needed in curve]
        if not drawn:
            continue
        figure = Figure(figsize=(5.2, 4.2), dpi=110)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for method, curve in drawn:
            style = styles.get(method, {})
            if kind == "pr":
                axes.plot(curve["recall"], curve["precision"], label=method, linewidth=1.4, **style)
            else:
                values = curve[needed]
                axes.plot(curve["threshold"], values, label=f"{method} (max {values.max():.3f})", linewidth=1.4,
                          **style)
        if kind == "pr":
            axes.set(xlabel="Recall", ylabel="Precision", title=f"{dataset}: precision-recall",
                     xlim=(0, 1), ylim=(0, 1.01))
        else:
            name = "F-measure" if kind == "fm" else "E-measure"
            axes.set(xlabel="Threshold", ylabel=name, title=f"{dataset}: {name} by threshold",
                     xlim=(0, 255), ylim=(0, 1.01))
        axes.grid(alpha=0.3)
        # Outside the axes, right of them, so no curve is hidden; two columns past 20 methods.
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small",
                    frameon=False, ncols=1 if len(drawn) <= 20 else 2)
        path = folder / f"{stem}_{kind}.png"
        atomic_write(path, lambda stream, figure=figure: figure.savefig(stream, format="png", bbox_inches="tight"))
        written.append(path)
    return written


class EvaluationReport:
    """Results of an evaluation, written to ``folder`` as ``results.{md,csv,json,tex,xlsx}`` and
    ``plots/<dataset>_{pr,fm,em}.png``.

    ``references`` (published scores) add their rows and a Δ row per method (against the first one);
    ``latex_metrics`` are the columns of ``results.tex`` (default: the metrics the references report,
    or every metric without references); ``meta`` records the protocol (``evaluate``'s) and feeds the
    footnote written with every table.
    """

    def __init__(self, folder: str | Path, meta: Mapping[str, Any] | None = None,
                 references: Sequence[Reference] = (), latex_metrics: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.meta = dict(meta or {})
        self.references = list(references)
        self.latex_metrics = list(latex_metrics) if latex_metrics is not None else None
        self.results: list[MethodResult] = []

    def add(self, result: MethodResult) -> None:
        self.results = [r for r in self.results if (r.dataset, r.method) != (result.dataset, result.method)]
        self.results.append(result)

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.results))

    def methods(self) -> list[str]:
        """The methods in order: ``meta["methods"]`` first (the order given), then any other."""
        return list(dict.fromkeys([*self.meta.get("methods", []), *(r.method for r in self.results)]))

    def rows(self) -> list[Row]:
        """The table rows: every dataset's methods, references and Δ rows."""
        return build_rows(self.results, self.references, self.datasets())

    def notes(self) -> list[str]:
        """The footnote of every table (``pgnet.evaluation.tables.protocol_notes``)."""
        return protocol_notes(self.meta, metric_columns(self.results), self.references)

    def latex_columns(self, rows: Sequence[Row]) -> list[str]:
        """The metric keys of ``results.tex``: ``latex_metrics`` (those present), else the references'."""
        present = metric_columns(rows)
        if self.latex_metrics is not None:
            return [key for key in self.latex_metrics if key in present] or present
        published = metric_columns([row for row in rows if row.kind == REFERENCE])
        return published or present

    def table(self, markdown: bool = True) -> str:
        """The Markdown (with the footnote) or terminal table of everything so far."""
        rows = self.rows()
        return format_markdown(rows, self.notes()) if markdown else format_text(rows)

    def write(self, plot_dataset: str | None = None) -> list[Path]:
        """Rewrite the tables (and the plots of ``plot_dataset``); returns the files written."""
        rows, notes = self.rows(), self.notes()
        caption = f"Results on {', '.join(self.datasets())}."
        texts = {
            "results.md": format_markdown(rows, notes),
            "results.csv": format_csv(rows),
            "results.json": format_json(self.results, self.meta, self.references, notes),
            "results.tex": format_latex(rows, notes, self.latex_columns(rows), caption),
        }
        written = []
        for name, text in texts.items():
            written.append(write_text(self.folder / name, text))
        written.append(atomic_write(self.folder / "results.xlsx", lambda stream: write_xlsx(stream, rows, notes)))
        if plot_dataset is not None:
            written += plot_curves(self.results, plot_dataset, self.folder / "plots", self.methods())
        return written
