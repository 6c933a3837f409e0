"""Evaluation: a model or prediction folders scored on datasets (``evaluator``), the scoring loop
that validation shares (``scoring``), prediction files matched to masks (``folders``), and the report
files (``report``: tables laid out by ``tables``, published scores from ``references``)."""
