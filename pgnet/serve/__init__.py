"""The HTTP service: `pgnet-serve` serves a model over FastAPI with dynamic batching.

- :mod:`~pgnet.serve.app`: ``create_app``, the routes, the request limits, the metrics, the model's loading;
- :mod:`~pgnet.serve.batcher`: ``DynamicBatcher``, concurrent pictures gathered into one forward pass;
- ``static/index.html``: the web page served at ``/``.
"""
