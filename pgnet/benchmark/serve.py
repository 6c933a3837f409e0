"""Load on ``pgnet-serve``: C concurrent clients for T seconds against a server on 127.0.0.1.

``serve_benchmark`` starts the server as a process (``python -m pgnet.cli.serve``), waits for
``/readyz``, runs ``measure_load`` and stops it with SIGTERM. ``measure_load`` runs against any
server URL: each client thread posts synthetic JPEG pictures one after the other until the time or the
request count is spent, and the report gives throughput, latency percentiles, responses by status, the
batch sizes the server ran (from ``/metrics``) and the server's resident memory at start and end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from pgnet.benchmark.memory import resident_mib

MAX_CLIENTS = 256
MAX_SECONDS = 600.0


def synthetic_jpegs(count: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """``count`` different JPEG pictures of a bright ellipse on a noisy background."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        image = (rng.random((height, width, 3)) * 90).astype(np.uint8)
        centre = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 4, 3 * height // 4)))
        axes = (int(rng.integers(width // 8, width // 4)), int(rng.integers(height // 8, height // 4)))
        cv2.ellipse(image, centre, axes, 0, 0, 360, tuple(int(v) for v in rng.integers(150, 256, 3)), -1)
        pictures.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return pictures


def _batch_sizes(metrics: str) -> tuple[float, float]:
    """(forward passes, pictures) from the server's batch-size histogram."""
    values = {name: float(value) for name, value in re.findall(r"^pgnet_batch_size_(count|sum) (\S+)$", metrics, re.M)}
    return values.get("count", 0.0), values.get("sum", 0.0)


def measure_load(url: str, clients: int, seconds: float, max_requests: int, pictures: Sequence[bytes],
                 mode: str = "mask", server_pid: int | None = None) -> dict[str, Any]:
    """Run ``clients`` threads posting ``pictures`` to ``url`` for ``seconds`` (or ``max_requests`` in all).

    Returns the figures: requests, seconds, requests/s (200s only), latency p50/p95/p99 in ms of the
    answered requests, responses by status (``error`` for a failed connection), the mean batch the
    server ran, and its RSS (MiB) at the start and the end when ``server_pid`` is known.
    """
    import httpx  # lazy: an optional dependency of the serve extra

    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS or max_requests < 1:
        raise ValueError(f"need 1-{MAX_CLIENTS} clients, 0-{MAX_SECONDS:g} seconds and at least one request")
    before = _batch_sizes(httpx.get(f"{url}/metrics", timeout=10).text)
    rss_start = resident_mib(server_pid) if server_pid else None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    sent = 0
    started = time.perf_counter()
    stop_at = started + seconds

    def client(index: int) -> None:
        nonlocal sent
        with httpx.Client(base_url=url, timeout=60) as session:
            count = index
            while time.perf_counter() < stop_at:
                with lock:
                    if sent >= max_requests:
                        return
                    sent += 1
                picture = pictures[count % len(pictures)]
                count += clients
                begin = time.perf_counter()
                try:
                    status = str(session.post("/v1/predict", params={"mode": mode}, content=picture).status_code)
                except httpx.HTTPError:
                    status = "error"
                elapsed = time.perf_counter() - begin
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - started
    after = _batch_sizes(httpx.get(f"{url}/metrics", timeout=10).text)
    passes, batched = after[0] - before[0], after[1] - before[1]
    percentiles = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "seconds": round(duration, 2),
        "throughput_per_s": round(statuses.get("200", 0) / duration, 2),
        "latency_ms": {"p50": round(float(percentiles[0]), 1), "p95": round(float(percentiles[1]), 1),
                       "p99": round(float(percentiles[2]), 1)},
        "statuses": dict(sorted(statuses.items())),
        "mean_batch": round(batched / passes, 2) if passes else None,
        "server_rss_mib": {"start": rss_start, "end": resident_mib(server_pid) if server_pid else None},
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_benchmark(model: str, clients: int = 8, seconds: float = 20.0, max_requests: int = 10_000,
                    size: tuple[int, int] = (480, 640), mode: str = "mask", server_args: Sequence[str] = (),
                    log: Callable[[str], None] = print, startup_timeout: float = 300.0) -> dict[str, Any]:
    """Start ``pgnet-serve MODEL`` (with ``server_args``) on a free port of 127.0.0.1, measure it under
    load (``measure_load``), stop it with SIGTERM; returns the figures with the server's exit status."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pgnet.cli.serve", str(model), "--port", str(port), *server_args]
    log(f"starting {' '.join(command)}")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within {startup_timeout:g} s")
            time.sleep(0.25)
        log(f"ready; {clients} clients for {seconds:g} s (at most {max_requests} requests)")
        figures = measure_load(url, clients, seconds, max_requests, synthetic_jpegs(16, *size), mode, server.pid)
        server.send_signal(signal.SIGTERM)
        figures["server_exit_status"] = server.wait(120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    figures.update(model=str(model), picture_size=list(size), mode=mode, server_args=list(server_args))
    return figures


def format_load(figures: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    latency, rss = figures["latency_ms"], figures["server_rss_mib"]
    memory = (f"server RSS {rss['start']:.0f} MiB at start, {rss['end']:.0f} MiB at the end"
              if rss["start"] is not None and rss["end"] is not None else "server RSS unknown")
    return "\n".join([
        f"{figures['requests']} requests from {figures['clients']} clients in {figures['seconds']} s: "
        f"{figures['throughput_per_s']} pictures/s answered 200, mean batch {figures['mean_batch']}",
        f"latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms",
        f"responses by status: {figures['statuses']}",
        memory,
    ])
