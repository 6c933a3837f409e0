"""Result tables: the rows of a report (methods, published references, differences) and their formats.

:func:`build_rows` lays out one block per dataset: the evaluated methods, then the published
references that have scores on it, then one Δ row per method (method minus the first reference, for
the metrics both have). Every writer reads those rows, so the Markdown, terminal, CSV, LaTeX and XLSX
tables always agree; a missing value is an empty cell everywhere (never zero).

- :func:`format_markdown`, :func:`format_text`, :func:`format_csv`: as before, with the new rows.
- :func:`format_latex`: booktabs; methods as rows and datasets as column groups when that fits
  (``WIDE_LIMIT`` value columns), else one block of rows per dataset; ↑/↓ in the header; the best,
  second and third values of each column (methods and references) wrapped in ``\\pgnetfirst``,
  ``\\pgnetsecond``, ``\\pgnetthird`` (red bold, green underlined, blue italic unless redefined).
- :func:`write_xlsx`: openpyxl; a summary sheet (methods × datasets × metrics), one sheet per dataset
  and a notes sheet; numbers stay numbers (the display format only rounds them; openpyxl stores 16
  significant digits, Excel keeps 15).
- :func:`protocol_notes`: the footnote written with every table: the F- and E-measure definitions
  used, the test protocol, the references' sources, the project version.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgnet.evaluation.references import Reference
from pgnet.metrics import LOWER_IS_BETTER, METRIC_GROUPS
from pgnet.metrics.boundary import BIOU_DILATION_RATIO, MBA_STEPS
from pgnet.metrics.hce import HCE_EPSILON, HCE_RELAX

METHOD, REFERENCE, DELTA = "method", "reference", "delta"
DECIMALS = 4  # of the evaluated methods' values
KEY_DECIMALS = {"HCE": 0}  # HCE counts clicks
WIDE_LIMIT = 16  # the LaTeX table puts datasets side by side up to this many value columns
RANKED = 3  # best, second and third are marked

# LaTeX column headers (PySODEvalToolkit's notation) and the arrow of each metric.
LATEX_NAMES = {
    "MAE": "MAE",
    "Sm": "$S_{m}$",
    "adpEm": "$E_{m}^{adp}$",
    "meanEm": "$E_{m}^{mean}$",
    "maxEm": "$E_{m}^{max}$",
    "adpFm": "$F_{\\beta}^{adp}$",
    "meanFm": "$F_{\\beta}^{mean}$",
    "maxFm": "$F_{\\beta}^{max}$",
    "wFm": "$F_{\\beta}^{\\omega}$",
    "BIoU": "BIoU",
    "mBA": "mBA",
    "HCE": "$HCE_{\\gamma}$",
}
LATEX_MARKS = ("\\pgnetfirst", "\\pgnetsecond", "\\pgnetthird")
LATEX_PREAMBLE = (
    "% Needs \\usepackage{booktabs} and \\usepackage{xcolor}. The best, second and third value of each\n"
    "% column are marked with the three commands below; define them before \\input to restyle.\n"
    "\\providecommand{\\pgnetfirst}[1]{\\textcolor{red}{\\textbf{#1}}}\n"
    "\\providecommand{\\pgnetsecond}[1]{\\textcolor{green!50!black}{\\underline{#1}}}\n"
    "\\providecommand{\\pgnetthird}[1]{\\textcolor{blue}{\\textit{#1}}}\n"
)


@dataclass
class Row:
    """One line of a table: a method's, a reference's or a difference's values on one dataset."""

    dataset: str
    method: str  # the label shown
    kind: str  # METHOD, REFERENCE or DELTA
    values: dict[str, float] = field(default_factory=dict)
    images: int | None = None
    decimals: int = DECIMALS
    against: str | None = None  # DELTA: the reference key
    of: str | None = None  # DELTA: the method

    def value(self, key: str) -> float | None:
        """The value of ``key``, None when missing or not a number."""
        value = self.values.get(key)
        return None if value is None or not math.isfinite(value) else float(value)

    def places(self, key: str) -> int:
        return KEY_DECIMALS.get(key, self.decimals)

    def cell(self, key: str) -> str:
        """The value as shown: fixed decimals, a sign on differences; '' when missing."""
        value = self.value(key)
        if value is None:
            return ""
        places = self.places(key)
        if self.kind == DELTA:
            value = round(value, places) + 0.0  # no "-0.0000"
            return f"{value:+.{places}f}"
        return f"{value:.{places}f}"


def build_rows(results: Sequence[Any], references: Sequence[Reference] = (),
               datasets: Sequence[str] | None = None) -> list[Row]:
    """The rows of ``results`` (``MethodResult``-like: dataset, method, metrics, num_images) and of
    ``references`` on the datasets evaluated, dataset by dataset (``datasets`` gives the order)."""
    order = list(datasets) if datasets is not None else list(dict.fromkeys(r.dataset for r in results))
    rows: list[Row] = []
    for dataset in order:
        ours = [Row(dataset, r.method, METHOD, dict(r.metrics), r.num_images) for r in results if r.dataset == dataset]
        rows += ours
        published = [(reference, reference.values(dataset)) for reference in references]
        rows += [Row(dataset, reference.method, REFERENCE, dict(values), None, reference.decimals)
                 for reference, values in published if values]
        if published and published[0][1]:
            reference, base = published[0]
            for row in ours:
                delta = {key: row.values[key] - value for key, value in base.items()
                         if row.value(key) is not None}
                rows.append(Row(dataset, f"Δ {row.method} vs {reference.key}", DELTA, delta, None,
                                against=reference.key, of=row.method))
    return rows


def metric_columns(rows: Iterable[Any]) -> list[str]:
    """The metric keys present in ``rows`` (``Row`` or ``MethodResult``), in the suite's table order."""
    present: set[str] = set()
    for row in rows:
        present.update(row.values if isinstance(row, Row) else row.metrics)
    order = [key for keys in METRIC_GROUPS.values() for key in keys]
    return [key for key in order if key in present] + sorted(present - set(order))


def ranks(rows: Sequence[Row], columns: Sequence[str]) -> dict[tuple[int, str], int]:
    """(row index, key) -> 1, 2 or 3 for the best three values of each column within each dataset,
    among methods and references (not differences), when at least two rows have a value. Values equal
    at four decimals share a rank (dense ranking)."""
    marked: dict[tuple[int, str], int] = {}
    for dataset in dict.fromkeys(row.dataset for row in rows):
        contenders = [(index, row) for index, row in enumerate(rows)
                      if row.dataset == dataset and row.kind != DELTA]
        for key in columns:
            values = [(index, round(row.value(key), DECIMALS)) for index, row in contenders
                      if row.value(key) is not None]
            if len(values) < 2:
                continue
            distinct = sorted({value for _, value in values}, reverse=key not in LOWER_IS_BETTER)
            position = {value: rank + 1 for rank, value in enumerate(distinct[:RANKED])}
            for index, value in values:
                if value in position:
                    marked[index, key] = position[value]
    return marked


# ---------------------------------------------------------------------------------------- text formats


def format_markdown(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """A Markdown table, one row per (dataset, method); the best value per dataset and column is bold
    (when several rows compete); ``notes`` follow as a list."""
    columns = metric_columns(rows)
    marked = ranks(rows, columns)
    lines = ["| " + " | ".join(["Dataset", "Method", "Images", *columns]) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for index, row in enumerate(rows):
        cells = []
        for key in columns:
            text = row.cell(key)
            cells.append(f"**{text}**" if text and marked.get((index, key)) == 1 else text)
        images = "" if row.images is None else str(row.images)
        lines.append("| " + " | ".join([_markdown_escape(row.dataset), _markdown_escape(row.method), images, *cells])
                     + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "".join(f"- {note}\n" for note in notes)
    return text


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


def format_text(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table for the terminal ('-' for a missing value)."""
    columns = metric_columns(rows)
    header = ["Dataset", "Method", "Images", *columns]
    lines = [header] + [[row.dataset, row.method, "" if row.images is None else str(row.images),
                         *[row.cell(key) or "-" for key in columns]] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) if i < 2 else text.rjust(width)
                               for i, (text, width) in enumerate(zip(line, widths))) for line in lines) + "\n"


def format_csv(rows: Sequence[Row]) -> str:
    """``dataset, method, kind, images, <metrics>``; values at full precision (``repr``), '' when missing."""
    columns = metric_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "kind", "images", *columns])
    for row in rows:
        writer.writerow([row.dataset, row.method, row.kind, "" if row.images is None else row.images,
                         *["" if row.value(key) is None else repr(row.value(key)) for key in columns]])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
    "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "Δ": "$\\Delta$", "−": "$-$",
    # the Greek letters and symbols of the notes, which pdflatex does not take as text
    "α": "$\\alpha$", "β": "$\\beta$", "ε": "$\\varepsilon$", "²": "$^2$", "·": "$\\cdot$", "×": "$\\times$",
    "↑": "$\\uparrow$", "↓": "$\\downarrow$", "≤": "$\\leq$", "≥": "$\\geq$",
    "<": "$<$", ">": "$>$", "|": "\\textbar{}",  # pdflatex's default font encoding has no < > | in text
}
_LATEX_PATTERN = re.compile("|".join(re.escape(char) for char in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode: ``\\ & % $ # _ { } ~ ^`` escaped (Δ becomes ``$\\Delta$``)."""
    return _LATEX_PATTERN.sub(lambda match: _LATEX_SPECIAL[match.group(0)], str(text))


def _latex_header(key: str) -> str:
    arrow = "$\\downarrow$" if key in LOWER_IS_BETTER else "$\\uparrow$"
    return f"{LATEX_NAMES.get(key, latex_escape(key))}{arrow}"


def _latex_cell(rows: Sequence[Row], index: int, key: str, marked: Mapping[tuple[int, str], int]) -> str:
    text = rows[index].cell(key)
    if not text:
        return ""
    if rows[index].kind == DELTA:
        text = f"${text[0]}${text[1:]}"  # a real minus (and plus) sign
    rank = marked.get((index, key))
    return f"{LATEX_MARKS[rank - 1]}{{{text}}}" if rank else text


def format_latex(rows: Sequence[Row], notes: Sequence[str] = (), columns: Sequence[str] | None = None,
                 caption: str | None = None) -> str:
    """A booktabs ``table`` (to ``\\input``; the packages it needs are named in its first lines).

    ``columns`` (default: every metric present) are the metric keys shown. Datasets sit side by side
    (methods as rows) when datasets × columns is at most ``WIDE_LIMIT``, else each dataset is a block
    of rows. Methods, references and differences are separated by rules; ``notes`` are printed under
    the table in small type.
    """
    columns = list(columns or metric_columns(rows))
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    marked = ranks(rows, columns)
    wide = len(datasets) * len(columns) <= WIDE_LIMIT
    lines = [LATEX_PREAMBLE.rstrip("\n"), "\\begin{table}[t]", "\\centering"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    lines.append("\\setlength{\\tabcolsep}{4pt}")
    if wide:
        lines += _latex_wide(rows, datasets, columns, marked)
    else:
        lines += _latex_long(rows, datasets, columns, marked)
    if notes:
        lines.append("\\par\\smallskip")
        lines.append("\\parbox{\\linewidth}{\\footnotesize " + " ".join(latex_escape(note) for note in notes) + "}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def _kind_blocks(labels: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Consecutive (kind, label) groups: methods, references, differences."""
    blocks: list[list[tuple[str, str]]] = []
    for kind in (METHOD, REFERENCE, DELTA):
        block = [item for item in labels if item[0] == kind]
        if block:
            blocks.append(block)
    return blocks


def _latex_wide(rows: Sequence[Row], datasets: Sequence[str], columns: Sequence[str],
                marked: Mapping[tuple[int, str], int]) -> list[str]:
    index_of = {(row.kind, row.method, row.dataset): index for index, row in enumerate(rows)}
    labels = list(dict.fromkeys((row.kind, row.method) for row in rows))
    width = len(columns)
    lines = [f"\\begin{{tabular}}{{l{'c' * (width * len(datasets))}}}", "\\toprule"]
    groups = []
    for dataset in datasets:
        counts = {row.images for row in rows if row.dataset == dataset and row.kind == METHOD}
        count = f" ({counts.pop()})" if len(counts) == 1 and None not in counts else ""
        groups.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(dataset)}{count}}}")
    lines.append(" & " + " & ".join(groups) + " \\\\")
    lines.append(" ".join(f"\\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(datasets))))
    lines.append("Method & " + " & ".join(_latex_header(key) for _ in datasets for key in columns) + " \\\\")
    for block in _kind_blocks(labels):
        lines.append("\\midrule")
        for kind, label in block:
            cells = []
            for dataset in datasets:
                index = index_of.get((kind, label, dataset))
                cells += ["" if index is None else _latex_cell(rows, index, key, marked) for key in columns]
            lines.append(f"{latex_escape(label)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return lines


def _latex_long(rows: Sequence[Row], datasets: Sequence[str], columns: Sequence[str],
                marked: Mapping[tuple[int, str], int]) -> list[str]:
    lines = [f"\\begin{{tabular}}{{ll{'c' * len(columns)}}}", "\\toprule",
             "Dataset & Method & " + " & ".join(_latex_header(key) for key in columns) + " \\\\"]
    for dataset in datasets:
        lines.append("\\midrule")
        first = True
        previous_kind = None
        for index, row in enumerate(rows):
            if row.dataset != dataset:
                continue
            if previous_kind is not None and row.kind != previous_kind:
                lines.append(f"\\cmidrule(lr){{2-{2 + len(columns)}}}")
            previous_kind = row.kind
            name = latex_escape(dataset) if first else ""
            first = False
            cells = [_latex_cell(rows, index, key, marked) for key in columns]
            lines.append(f"{name} & {latex_escape(row.method)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return lines


# ----------------------------------------------------------------------------------------------- XLSX

_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")
_FILLS = ("F4CCCC", "D9EAD3", "CFE2F3")  # light red, green, blue: best, second, third


def sheet_names(datasets: Sequence[str], reserved: Sequence[str] = ("Summary", "Notes")) -> dict[str, str]:
    """A valid, unique Excel sheet name per dataset (at most 31 characters, none of ``[]:*?/\\``)."""
    taken = {name.lower() for name in reserved}
    names: dict[str, str] = {}
    for dataset in datasets:
        base = _SHEET_FORBIDDEN.sub("_", dataset).strip("'")[:31] or "dataset"
        name, number = base, 2
        while name.lower() in taken:
            suffix = f" ({number})"
            name, number = base[: 31 - len(suffix)] + suffix, number + 1
        taken.add(name.lower())
        names[dataset] = name
    return names


def _number_format(row: Row, key: str) -> str:
    places = row.places(key)
    digits = "0." + "0" * places if places else "0"
    return f"+{digits};-{digits};{digits}" if row.kind == DELTA else digits


def write_xlsx(stream: io.IOBase, rows: Sequence[Row], notes: Sequence[str] = ()) -> None:
    """The workbook: ``Summary`` (one line per method/reference/difference, datasets × metrics as
    columns), one sheet per dataset (the Markdown table's rows), ``Notes`` (the footnote)."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    columns = metric_columns(rows)
    marked = ranks(rows, columns)
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    bold = Font(bold=True)
    fills = [PatternFill("solid", start_color=color, end_color=color) for color in _FILLS]

    def put(sheet: Any, line: int, column: int, row_index: int, key: str) -> None:
        row = rows[row_index]
        value = row.value(key)
        if value is None:
            return
        cell = sheet.cell(line, column, value)
        cell.number_format = _number_format(row, key)
        rank = marked.get((row_index, key))
        if rank:
            cell.fill = fills[rank - 1]
            if rank == 1:
                cell.font = bold

    workbook = Workbook()
    summary = workbook.active
    summary.title = "Summary"
    summary.cell(1, 1, "Method").font = bold
    summary.cell(1, 2, "Kind").font = bold
    for position, dataset in enumerate(datasets):
        start = 3 + position * len(columns)
        summary.cell(1, start, dataset).font = bold
        summary.cell(1, start).alignment = Alignment(horizontal="center")
        if len(columns) > 1:
            summary.merge_cells(start_row=1, start_column=start, end_row=1, end_column=start + len(columns) - 1)
        for offset, key in enumerate(columns):
            summary.cell(2, start + offset, key).font = bold
    labels = list(dict.fromkeys((row.kind, row.method) for row in rows))
    index_of = {(row.kind, row.method, row.dataset): index for index, row in enumerate(rows)}
    for line, (kind, label) in enumerate(labels, start=3):
        summary.cell(line, 1, label)
        summary.cell(line, 2, kind)
        for position, dataset in enumerate(datasets):
            index = index_of.get((kind, label, dataset))
            if index is not None:
                for offset, key in enumerate(columns):
                    put(summary, line, 3 + position * len(columns) + offset, index, key)
    summary.freeze_panes = "C3"
    summary.column_dimensions["A"].width = max([12, *(len(label) + 2 for _, label in labels)])

    for dataset, name in sheet_names(datasets).items():
        sheet = workbook.create_sheet(name)
        present = [key for key in columns if any(row.value(key) is not None for row in rows if row.dataset == dataset)]
        for column, title in enumerate(["Method", "Kind", "Images", *present], start=1):
            sheet.cell(1, column, title).font = bold
        line = 2
        for index, row in enumerate(rows):
            if row.dataset != dataset:
                continue
            sheet.cell(line, 1, row.method)
            sheet.cell(line, 2, row.kind)
            if row.images is not None:
                sheet.cell(line, 3, row.images)
            for offset, key in enumerate(present):
                put(sheet, line, 4 + offset, index, key)
            line += 1
        sheet.freeze_panes = "D2"
        sheet.column_dimensions["A"].width = max([12, *(len(row.method) + 2 for row in rows if row.dataset == dataset)])
        for column in range(4, 4 + len(present)):
            sheet.column_dimensions[get_column_letter(column)].width = 10

    sheet = workbook.create_sheet("Notes")
    for line, note in enumerate(notes, start=1):
        sheet.cell(line, 1, note)
    workbook.save(stream)


# -------------------------------------------------------------------------------------------- footnote


def _format_stats(values: Sequence[float] | None) -> str:
    return "(" + ", ".join(f"{value:.3f}" for value in values) + ")" if values else "?"


def protocol_notes(meta: Mapping[str, Any], keys: Iterable[str], references: Sequence[Reference] = (),
                   version: str | None = None) -> list[str]:
    """The footnote of every table: how the metrics in ``keys`` were computed, the test protocol
    recorded in ``meta`` (``pgnet.evaluation.evaluator.evaluate``'s), the references' sources."""
    if version is None:
        from pgnet import __version__ as version
    keys = set(keys)
    notes = [f"Scored by pgnet-eval {version} with pysodmetrics 1.6's definitions: masks binarised at > 128; "
             "predictions as 8-bit maps, min-max normalised per image; dataset values are means over images."]
    if keys & {"adpFm", "meanFm", "maxFm"}:
        notes.append("F-measure: β² = 0.3; precision and recall at the 256 thresholds 0..255, averaged over the "
                     "images into one curve per dataset; maxFm and meanFm are the max and the mean of that mean "
                     "curve (not means of per-image maxima); adpFm binarises at min(2·mean, 1) per image.")
    if keys & {"adpEm", "meanEm", "maxEm"}:
        notes.append("E-measure: enhanced alignment (Fan et al., IJCAI 2018) at the same 256 thresholds; maxEm and "
                     "meanEm are the max and the mean of the mean curve; adpEm at min(2·mean, 1).")
    extra = []
    if "Sm" in keys:
        extra.append("Sm α = 0.5")
    if "wFm" in keys:
        extra.append("wFm β = 1")
    if "BIoU" in keys:
        extra.append(f"BIoU on binary maps (> 128), d = {BIOU_DILATION_RATIO:g} × diagonal")
    if "mBA" in keys:
        extra.append(f"mBA as CascadePSP ({MBA_STEPS} radii, maps > 128)")
    if "HCE" in keys:
        extra.append(f"HCE as IS-Net/pysodmetrics (relax {HCE_RELAX}, ε = {HCE_EPSILON:g}; lower is better)")
    if extra:
        notes.append("; ".join(extra) + ".")
    if meta.get("checkpoint"):
        size = meta.get("size")
        decode = ("reduced JPEG decode, uint8 resize (--fast-decode)" if meta.get("fast_decode")
                  else "official test protocol: full decode, normalised as float, then resized")
        flip = ", flip averaging" if meta.get("flip") else ""
        notes.append(f"Checkpoint {meta['checkpoint']} ({meta.get('weights', 'model')} weights) at {size}×{size}, "
                     f"mean {_format_stats(meta.get('mean'))}, std {_format_stats(meta.get('std'))}, {decode}{flip}, "
                     f"precision {meta.get('precision', 'auto')}; predictions resized to each mask's size, "
                     "scored as 8-bit PNGs.")
    if meta.get("prediction_dirs"):
        notes.append("Prediction folders scored at each mask's size (a prediction of another size is resized "
                     "bilinearly to it).")
    by_source: dict[str, list[Reference]] = {}
    for reference in references:
        by_source.setdefault(reference.source, []).append(reference)
    for source, group in by_source.items():
        names = "; ".join(reference.label() for reference in group)
        notes.append(f"Published rows: {names}. Source: {source}. Scored with the authors' own code, whose "
                     "F-measure details may differ.")
    if references:
        notes.append(f"Δ rows: method minus {references[0].key}, at full precision (↑ metrics: positive is better; "
                     "↓ metrics: negative is better). An empty cell is a value not computed or not published.")
    return notes
