"""Prediction: the ``Predictor``, the inference runtime and its fast paths, files, videos, output
pictures and ONNX export.

Modules are imported where they are used; ``pgnet.Predictor`` is the user's entry point.
"""
