"""``pgnet-serve`` as a process: SIGTERM finishes the accepted requests and exits 0; usage errors exit 2."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from serve_pictures import json_mask, picture, png

from pgnet.cli.serve import main as serve_main

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def queue_depth(base: str) -> float:
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    return float(re.search(r"^pgnet_queue_depth (\S+)$", metrics, re.M)[1])


def test_sigterm_during_load_finishes_every_accepted_request_and_exits_0(serve_package):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pgnet.cli.serve", str(serve_package), "--port", str(port), "--device", "cpu",
         "--max-batch", "32", "--max-wait-ms", "1500", "--threads", "1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)
        images = [picture(seed) for seed in range(12)]
        responses: list = [None] * len(images)

        def send(index: int) -> None:
            responses[index] = httpx.post(f"{base}/v1/predict?response=json", content=png(images[index]), timeout=60)

        threads = [threading.Thread(target=send, args=(index,)) for index in range(len(images))]
        for thread in threads:
            thread.start()
        while queue_depth(base) < len(images):  # every request accepted and waiting for its batch
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        status = server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    output = server.stdout.read()
    assert status == 0, output[-3000:]
    assert [response.status_code for response in responses] == [200] * len(images)
    assert all(json_mask(response).shape == image.shape[:2] for response, image in zip(responses, images))
    assert not any(np.isnan(json_mask(response)).any() for response in responses)


def test_usage_errors_exit_2(tmp_path, capsys):
    assert serve_main([str(tmp_path / "missing.pth"), "--device", "cpu"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert serve_main([str(tmp_path), "--max-batch", "0"]) == 2
    empty_key = tmp_path / "key"
    empty_key.write_text("\n")
    assert serve_main([str(tmp_path), "--api-key-file", str(empty_key)]) == 2
    assert "empty" in capsys.readouterr().err

