"""Evaluation: a model or prediction folders scored on datasets (``evaluator``), the scoring loop
that validation shares (``scoring``), and prediction files matched to masks (``folders``)."""
