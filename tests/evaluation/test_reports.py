"""The report files: published references beside the methods (the shipped PGNet scores and a user's
file), the Δ rows, the LaTeX table (structure, escaping, marks; compiled where pdflatex is installed),
the XLSX workbook (read back to the CSV's numbers), the footnote, and the three curve kinds."""

from __future__ import annotations

import configparser
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from pgnet.errors import UnknownNameError
from pgnet.evaluation.references import (
    ReferenceFileError,
    load_reference_file,
    resolve_references,
    shipped_reference_files,
    shipped_references,
)
from pgnet.evaluation.report import CURVE_KINDS, TABLE_FILES, EvaluationReport, MethodResult, method_styles
from pgnet.evaluation.tables import DELTA, METHOD, REFERENCE, build_rows, format_csv, format_latex, latex_escape

REPO = Path(__file__).resolve().parents[2]
openpyxl = pytest.importorskip("openpyxl")

# Two methods (names that need escaping) on two datasets; pgnet-dh has no mBA on DUTS-TE (a missing cell).
METHODS = ("ours_v2 & co", "base#1 100%")
DATASETS = ("DAVIS-S", "DUTS-TE")
SCORES = {
    ("DAVIS-S", METHODS[0]): {"MAE": 0.0141, "Sm": 0.9502, "maxEm": 0.97, "maxFm": 0.9493, "mBA": 0.7201},
    ("DAVIS-S", METHODS[1]): {"MAE": 0.0205, "Sm": 0.9318, "maxEm": 0.96, "maxFm": 0.9207, "mBA": 0.6912},
    ("DUTS-TE", METHODS[0]): {"MAE": 0.0290, "Sm": 0.9104, "maxEm": 0.95, "maxFm": 0.9011, "mBA": 0.7011},
    ("DUTS-TE", METHODS[1]): {"MAE": 0.0311, "Sm": 0.9051, "maxEm": 0.94, "maxFm": 0.8950, "mBA": 0.6950},
}


def curves(quality: float) -> dict[str, np.ndarray]:
    threshold = np.arange(255, -1, -1)
    t = threshold / 255
    return {"threshold": threshold, "precision": 1 - (1 - quality) * (1 - t) ** 2, "recall": 1 - t**3,
            "fm": quality * np.sin(np.pi * np.clip(t, 0.01, 0.99)), "em": quality * (1 - (t - 0.5) ** 2)}


def results() -> list[MethodResult]:
    return [MethodResult(dataset, method, dict(SCORES[dataset, method]), 3 + index, curves(0.9 - 0.1 * index))
            for dataset in DATASETS for index, method in enumerate(METHODS)]


USER_FILE = """\
references:
  mine:
    method: My baseline (paper)
    source: Me et al., 2025, Table 2
    decimals: 4
    scores:
      davis_s: {Sm: 0.9400, HCE: 12}
"""


@pytest.fixture
def references(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_FILE)
    return resolve_references(["pgnet-dh", str(path)])


# ---------------------------------------------------------------------------------------- references


def test_shipped_pgnet_references_with_their_sources():
    shipped = shipped_references()
    assert list(shipped) == ["pgnet-d", "pgnet-dh", "pgnet-uh"]
    assert shipped["pgnet-d"].training == "DUTS-TR"
    assert shipped["pgnet-dh"].training == "DUTS-TR + HRSOD-TR"
    assert shipped["pgnet-uh"].training == "UHRSD-TR + HRSOD-TR"
    assert shipped["pgnet-uh"].values("UHRSD-TE") == {"Sm": 0.935, "maxFm": 0.930, "MAE": 0.026, "mBA": 0.765}
    assert shipped["pgnet-d"].values("DAVIS-S") == {"Sm": 0.935, "maxFm": 0.931, "MAE": 0.015, "mBA": 0.707}
    assert shipped["pgnet-dh"].values("DUT-OMRON") == {"Sm": 0.858, "maxFm": 0.803, "MAE": 0.046}
    assert shipped["pgnet-dh"].values("duts-te") == {"Sm": 0.912, "maxFm": 0.905, "MAE": 0.028}  # no mBA
    for reference in shipped.values():
        assert "CVPR 2022" in reference.source and "InSPyReNet" in reference.source
        assert set(reference.scores) == {"DAVIS-S", "HRSOD-TE", "UHRSD-TE", "DUTS-TE", "DUT-OMRON"}


def test_the_references_ship_as_package_data():
    assert [path.name for path in shipped_reference_files()] == ["pgnet.yaml"]
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert "references/*.yaml" in setup["options.package_data"]["pgnet.evaluation"]


def test_a_user_reference_file_in_the_same_format(references, tmp_path):
    assert [reference.key for reference in references] == ["pgnet-dh", "mine"]
    mine = references[1]
    assert mine.values("DAVIS-S") == {"Sm": 0.94, "HCE": 12.0} and mine.decimals == 4
    assert mine.file == tmp_path / "mine.yaml"
    with pytest.raises(UnknownNameError, match="unknown reference 'pgnet-x'; shipped: pgnet-d, pgnet-dh, pgnet-uh"):
        resolve_references(["pgnet-x"])
    with pytest.raises(ValueError, match="given more than once"):
        resolve_references(["pgnet-dh", "pgnet-dh"])


@pytest.mark.parametrize(("text", "message"), [
    ("references: [1, 2]", r"expected a top-level 'references:' mapping"),
    ("references:\n  k: {method: M, source: S}", r"references\.k: missing scores"),
    ("references:\n  k: {method: M, scores: {D: {Sm: 0.9}}}", r"references\.k: missing source"),
    ("references:\n  k: {method: M, source: S, scores: {D: {Smeasure: 0.9}}}",
     r"references\.k\.scores\.D\.Smeasure: unknown metric; known: MAE, Sm"),
    ("references:\n  k: {method: M, source: S, scores: {D: {MAE: -1}}}",
     r"references\.k\.scores\.D\.MAE: expected a non-negative number, got -1"),
    ("references:\n  k: {method: M, source: S, scores: {D: {MAE: yes}}}", r"references\.k\.scores\.D\.MAE"),
    ("references:\n  k: {method: M, source: S, color: red, scores: {D: {MAE: 0.1}}}", r"unknown field\(s\) color"),
    ("references:\n  k: {method: M, source: S, decimals: 12, scores: {D: {MAE: 0.1}}}", r"k\.decimals"),
    ("references: {k: [", r"is not valid YAML"),
])
def test_bad_reference_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ReferenceFileError, match=message) as caught:
        load_reference_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ReferenceFileError, match="does not exist"):
        resolve_references([str(tmp_path / "absent.yaml")])


# ------------------------------------------------------------------------------------ reference rows


def test_reference_and_delta_rows_for_two_methods_on_two_datasets(references):
    rows = build_rows(results(), references)
    layout = [(row.dataset, row.kind, row.method) for row in rows]
    assert layout == [
        ("DAVIS-S", METHOD, METHODS[0]), ("DAVIS-S", METHOD, METHODS[1]),
        ("DAVIS-S", REFERENCE, "PGNet (DH) published"), ("DAVIS-S", REFERENCE, "My baseline (paper)"),
        ("DAVIS-S", DELTA, f"Δ {METHODS[0]} vs pgnet-dh"), ("DAVIS-S", DELTA, f"Δ {METHODS[1]} vs pgnet-dh"),
        ("DUTS-TE", METHOD, METHODS[0]), ("DUTS-TE", METHOD, METHODS[1]),
        ("DUTS-TE", REFERENCE, "PGNet (DH) published"),  # "mine" has no DUTS-TE score: no row
        ("DUTS-TE", DELTA, f"Δ {METHODS[0]} vs pgnet-dh"), ("DUTS-TE", DELTA, f"Δ {METHODS[1]} vs pgnet-dh"),
    ]
    delta = rows[4]
    assert delta.values == pytest.approx({"MAE": 0.0141 - 0.012, "Sm": 0.9502 - 0.947, "maxFm": 0.9493 - 0.948,
                                          "mBA": 0.7201 - 0.716}, abs=1e-15)
    assert delta.cell("MAE") == "+0.0021" and rows[5].cell("Sm") == "-0.0152"
    duts_delta = rows[9]
    assert "mBA" not in duts_delta.values and duts_delta.cell("mBA") == ""  # missing, never zero
    assert rows[8].cell("mBA") == "" and rows[8].cell("Sm") == "0.912"  # the published precision
    assert rows[3].cell("HCE") == "12" and rows[3].cell("MAE") == ""

    table = list(csv.DictReader(io.StringIO(format_csv(rows))))
    assert [row["kind"] for row in table] == [row.kind for row in rows]
    assert table[8]["mBA"] == "" and table[9]["mBA"] == "" and float(table[8]["Sm"]) == 0.912
    assert float(table[4]["MAE"]) == rows[4].values["MAE"] and table[2]["images"] == ""
    assert float(table[0]["Sm"]) == 0.9502 and table[0]["images"] == "3"


def test_a_method_named_like_a_reference_row_is_refused(tmp_path, references):
    from pgnet.evaluation.evaluator import EvalDataset, evaluate

    mask = tmp_path / "mask"
    mask.mkdir()
    with pytest.raises(ValueError, match="has the name of a reference row"):
        evaluate([EvalDataset("DAVIS-S", mask)], tmp_path / "out", prediction_dirs={"PGNet (DH) published": mask},
                 references=references, echo=None)


# ------------------------------------------------------------------------------------------ the files


def write_report(folder: Path, references, meta=None, plots: bool = False) -> EvaluationReport:
    report = EvaluationReport(folder, meta or {"methods": list(METHODS), "prediction_dirs": {"x": "y"}}, references)
    for result in results():
        report.add(result)
    for dataset in DATASETS:
        report.write(plot_dataset=dataset if plots and dataset == DATASETS[0] else None)
    return report


def strip_escaped(text: str) -> str:
    return re.sub(r"\\[{}&%$#_]", "", text)


def check_latex_structure(tex: str) -> None:
    body = strip_escaped("\n".join(line for line in tex.splitlines() if not line.startswith("%")))
    depth = 0
    for char in body:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0, "unbalanced braces"
    assert body.count("$") % 2 == 0, "unbalanced math"
    environments = re.findall(r"\\(begin|end)\{(\w+)\}", body)
    stack = []
    for kind, name in environments:
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack and [name for kind, name in environments if kind == "begin"] == ["table", "tabular"]
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in body
    assert "\\hline" not in body and "|" not in re.search(r"\\begin\{tabular\}\{([^}]*)\}", body).group(1)
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", body).group(1)
    table = body.split("\\begin{tabular}", 1)[1].split("\\end{tabular}", 1)[0]
    for line in table.splitlines():
        if line.endswith("\\\\") and "\\multicolumn" not in line:
            assert line.count("&") == len(spec) - 1, line  # every row fills the columns
    text = re.sub(r"\$[^$]*\$", "", body.split("\\begin{table}", 1)[1])  # the table, math left out
    for special in ("%", "#", "_"):  # only escaped ("&" separates the cells: counted above)
        assert special not in text, special


def test_latex_table_booktabs_arrows_marks_and_escaping(tmp_path, references):
    write_report(tmp_path, references)
    tex = (tmp_path / "results.tex").read_text()
    check_latex_structure(tex)
    assert "\\usepackage{booktabs}" in tex.splitlines()[0]
    assert latex_escape(METHODS[0]) == "ours\\_v2 \\& co" and "ours\\_v2 \\& co &" in tex
    assert "base\\#1 100\\% &" in tex
    # the references report Sm, maxFm, MAE, mBA (and HCE): those are the columns, datasets side by side
    header = next(line for line in tex.splitlines() if line.startswith("Method &"))
    assert header.count("MAE$\\downarrow$") == 2 and header.count("$S_{m}$$\\uparrow$") == 2
    assert header.count("$HCE_{\\gamma}$$\\downarrow$") == 2 and "mBA$\\uparrow$" in header
    assert "\\multicolumn{5}{c}{DAVIS-S (3" not in tex  # images differ between the methods: no count
    davis_sm = {line.split(" & ")[0]: line.split(" & ")[2] for line in tex.splitlines()
                if " & " in line and not line.startswith(("Method", " "))}
    assert davis_sm["ours\\_v2 \\& co"] == "\\pgnetfirst{0.9502}"  # Sm: .9502 > .947 > .940 > .9318
    assert davis_sm["PGNet (DH) published"] == "\\pgnetsecond{0.947}"
    assert davis_sm["My baseline (paper)"] == "\\pgnetthird{0.9400}"
    assert davis_sm["base\\#1 100\\%"] == "0.9318"
    assert "$\\Delta$ ours\\_v2 \\& co vs pgnet-dh & $+$0.0021" in tex
    assert "\\pgnetfirst" not in next(line for line in tex.splitlines() if line.startswith("$\\Delta$"))
    assert "\\parbox{\\linewidth}{\\footnotesize" in tex and "$\\beta$$^2$ = 0.3" in tex


def test_latex_long_layout_when_the_columns_do_not_fit(references):
    rows = build_rows(results(), references)
    tex = format_latex(rows, ["a note with 50% & more"], columns=["MAE", "Sm", "maxFm", "mBA", "HCE", "BIoU",
                                                                      "wFm", "meanFm", "adpFm"])
    check_latex_structure(tex)
    assert "Dataset & Method &" in tex and "\\cmidrule(lr){2-11}" in tex
    assert "a note with 50\\% \\& more" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (structure checked above)")
def test_latex_table_compiles_with_pdflatex(tmp_path, references):
    write_report(tmp_path / "out", references)
    rows = build_rows(results(), references)
    (tmp_path / "long.tex").write_text(format_latex(rows, ["note"], columns=["MAE", "Sm", "maxFm", "mBA", "HCE",
                                                                             "BIoU", "wFm", "meanFm", "adpFm"]))
    document = ("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{xcolor}\n"
                "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n"
                "\\input{out/results.tex}\n\\input{long.tex}\n\\end{document}\n")
    (tmp_path / "doc.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    assert "Missing character" not in (tmp_path / "doc.log").read_text(errors="replace")


def test_xlsx_reads_back_to_the_csv_numbers(tmp_path, references):
    write_report(tmp_path, references)
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    workbook = openpyxl.load_workbook(tmp_path / "results.xlsx")
    assert workbook.sheetnames == ["Summary", "DAVIS-S", "DUTS-TE", "Notes"]
    keys = [key for key in table[0] if key not in ("dataset", "method", "kind", "images")]
    for dataset in DATASETS:
        sheet = workbook[dataset]
        header = [cell.value for cell in sheet[1]]
        lines = [dict(zip(header, (cell.value for cell in line))) for line in sheet.iter_rows(min_row=2)]
        expected = [row for row in table if row["dataset"] == dataset]
        assert [(line["Method"], line["Kind"]) for line in lines] == [(row["method"], row["kind"]) for row in expected]
        for line, row in zip(lines, expected):
            assert line["Images"] == (int(row["images"]) if row["images"] else None)
            for key in keys:
                value = line.get(key)
                assert (value is None) == (row[key] == ""), (dataset, row["method"], key)
                if value is not None:  # openpyxl writes 16 significant digits (Excel keeps 15)
                    assert isinstance(value, float | int) and value == float(f"{float(row[key]):.16g}")
    summary = workbook["Summary"]
    assert summary.cell(1, 3).value == "DAVIS-S" and summary.cell(2, 3).value == keys[0]
    labels = [summary.cell(line, 1).value for line in range(3, summary.max_row + 1)]
    assert labels[:3] == [*METHODS, "PGNet (DH) published"]
    davis = {key: summary.cell(3, 3 + index).value for index, key in enumerate(keys)}
    assert davis["Sm"] == 0.9502 and davis["HCE"] is None
    best = workbook["DAVIS-S"].cell(2, 3 + 1 + keys.index("Sm"))
    assert best.value == 0.9502 and best.font.bold and best.number_format == "0.0000"
    notes = [line[0].value for line in workbook["Notes"].iter_rows()]
    assert any("β² = 0.3" in note for note in notes)


def test_footnote_with_every_table(tmp_path, references):
    meta = {"methods": [METHODS[0]], "checkpoint": "runs/x/best.pth", "size": 1024, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "fast_decode": False, "flip": False, "precision": "fp32"}
    report = write_report(tmp_path, references, meta)
    import pgnet

    notes = report.notes()
    text = "\n".join(notes)
    for expected in ("β² = 0.3", "256 thresholds 0..255", "max and the mean of that mean curve",
                     "E-measure", "1024×1024", "official test protocol", f"pgnet-eval {pgnet.__version__}",
                     "CVPR 2022", "Me et al., 2025", "Δ rows: method minus pgnet-dh"):
        assert expected in text, expected
    assert "\n- F-measure: β² = 0.3" in (tmp_path / "results.md").read_text()
    assert "F-measure: $\\beta$$^2$ = 0.3" in (tmp_path / "results.tex").read_text()
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["notes"] == notes
    assert document["references"]["pgnet-dh"]["scores"]["DAVIS-S"]["mBA"] == 0.716
    differences = document["differences"]["DUTS-TE"][METHODS[1]]
    assert differences["against"] == "pgnet-dh" and "mBA" not in differences["metrics"]
    assert set(TABLE_FILES) <= {path.name for path in tmp_path.iterdir()}


def test_three_curve_kinds_with_a_legend_outside_and_fixed_styles(tmp_path, references):
    write_report(tmp_path, references, plots=True)  # the first dataset's curves
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["DAVIS-S_em.png", "DAVIS-S_fm.png",
                                                                          "DAVIS-S_pr.png"]
    for kind in CURVE_KINDS:
        picture = cv2.imread(str(tmp_path / "plots" / f"DAVIS-S_{kind}.png"))
        assert picture is not None and picture.shape[1] > picture.shape[0]  # the legend widens it
    styles = method_styles([f"m{index}" for index in range(40)])
    assert len({(str(style["color"]), style["linestyle"]) for style in styles.values()}) == 40
    assert method_styles(["a", "b", "c"])["b"] == method_styles(["a", "b"])["b"]
    report = EvaluationReport(tmp_path / "order", {"methods": ["z", "a"]})
    report.add(MethodResult("D", "a", {"MAE": 0.1}, 1))
    report.add(MethodResult("D", "y", {"MAE": 0.1}, 1))
    assert report.methods() == ["z", "a", "y"]  # colours follow the given order on every dataset
