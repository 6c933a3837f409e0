"""pgnet.benchmark.serve: the load figures against a server on 127.0.0.1 (a stand-in network)."""

import os
import threading
import time

import cv2
import numpy as np
import pytest

from pgnet.benchmark.serve import format_load, measure_load, synthetic_jpegs
from pgnet.serve.app import ServeSettings, create_app


class BrightnessPredictor:
    """The predictor's interface without a network: the mask is the picture's brightness."""

    size = 32

    def predict_arrays(self, images, sizes):
        return [cv2.resize(image.mean(axis=2).astype(np.float32) / 255, (w, h)) for image, (h, w) in zip(images, sizes)]


def test_load_figures_count_every_request_and_read_the_server_memory():
    import uvicorn

    app = create_app(ServeSettings(model="brightness", max_batch=4), BrightnessPredictor())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (server.started and app.state.service.ready.is_set()):
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        figures = measure_load(url, clients=4, seconds=30, max_requests=40, pictures=synthetic_jpegs(4, 48, 64),
                               server_pid=os.getpid())
    finally:
        server.should_exit = True
        thread.join(30)
    assert figures["requests"] == 40 and figures["statuses"] == {"200": 40}
    assert 1 <= figures["mean_batch"] <= 4
    latency = figures["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert figures["server_rss_mib"]["start"] > 0 and figures["server_rss_mib"]["end"] > 0
    assert "40 requests from 4 clients" in format_load(figures)
    with pytest.raises(ValueError):
        measure_load(url, clients=0, seconds=1, max_requests=1, pictures=[])
