"""The HTTP service: `pgnet-serve` serves a model over FastAPI with dynamic batching."""
