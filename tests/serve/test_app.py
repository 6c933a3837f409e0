"""pgnet.serve.app in-process (httpx over ASGI): batched results, refused inputs, probes, load."""

import asyncio
import contextlib
import os
import time

import cv2
import httpx
import numpy as np
import pytest
from serve_pictures import json_mask, picture, png, png_bomb

from pgnet.benchmark.memory import resident_mib
from pgnet.data.io import MAX_PIXELS_ENV
from pgnet.serve.app import ServeSettings, create_app


@contextlib.asynccontextmanager
async def serving(predictor, model, **settings):
    """A client of an application serving ``predictor`` (started and warmed; stopped after)."""
    app = create_app(ServeSettings(model=str(model), **settings), predictor)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.service.ready.wait(), 60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pgnet", timeout=60) as client:
            yield client


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_are_batched_and_each_gets_its_own_mask(serve_predictor, serve_package):
    pictures = [picture(seed, 40 + seed % 7 * 6, 56 + seed % 5 * 8) for seed in range(64)]

    async def scenario():
        async with serving(serve_predictor, serve_package, max_batch=16, max_wait_ms=100) as client:
            return await asyncio.gather(*(
                client.post("/v1/predict", params={"response": "json"}, files={"image": ("p.png", png(image))})
                for image in pictures))

    responses = run(scenario())
    assert [response.status_code for response in responses] == [200] * 64
    batch_sizes = [int(response.headers["X-PGNet-Batch-Size"]) for response in responses]
    assert max(batch_sizes) > 1
    expected = serve_predictor(pictures)  # batched by 16 in order: other batches than the server's
    for image, response, own in zip(pictures, responses, expected):
        mask = json_mask(response)
        assert mask.shape == image.shape[:2]
        assert np.abs(mask - own).max() <= 1e-5


def test_output_modes_return_pictures(serve_predictor, serve_package):
    image = picture(1)

    async def scenario():
        async with serving(serve_predictor, serve_package) as client:
            rgba = await client.post("/v1/predict?mode=rgba", content=png(image), headers={"Content-Type": "image/png"})
            color = await client.post("/v1/predict", data={"mode": "color", "color": "#00ff00"},
                                      files={"image": ("p.png", png(image))})
            background = await client.post("/v1/predict", data={"mode": "background"},
                                           files={"image": ("p.png", png(image)),
                                                  "background": ("b.png", png(picture(2, 30, 30)))})
            return rgba, color, background

    rgba, color, background = run(scenario())
    assert rgba.status_code == color.status_code == background.status_code == 200, (rgba.text, color.text)
    cut_out = cv2.imdecode(np.frombuffer(rgba.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert cut_out.shape == (*image.shape[:2], 4)
    expected_alpha = np.rint(serve_predictor(image) * 255)
    assert np.abs(cut_out[:, :, 3].astype(float) - expected_alpha).max() <= 1
    assert cv2.imdecode(np.frombuffer(color.content, np.uint8), cv2.IMREAD_COLOR).shape == image.shape
    assert cv2.imdecode(np.frombuffer(background.content, np.uint8), cv2.IMREAD_COLOR).shape == image.shape


def test_refused_inputs_get_their_status_and_the_worker_goes_on(serve_predictor, serve_package, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    good = png(picture(3))
    truncated = good[: len(good) // 2]
    auth = {"Authorization": "Bearer s3cret"}

    async def scenario():
        async with serving(serve_predictor, serve_package, max_upload_bytes=64 * 1024,
                           api_key_file=str(key_file)) as client:
            post = client.post
            return {
                "no key": await post("/v1/predict", content=good),
                "wrong key": await post("/v1/predict", content=good, headers={"Authorization": "Bearer s3creT"}),
                "oversize": await post("/v1/predict", content=b"\x89PNG" + bytes(100 * 1024), headers=auth),
                "bomb": await post("/v1/predict", content=png_bomb(4000), headers=auth),
                "not an image": await post("/v1/predict", content=b"GIF? no, some text", headers=auth),
                "truncated": await post("/v1/predict", content=truncated, headers=auth),
                "empty": await post("/v1/predict", content=b"", headers=auth),
                "bad mode": await post("/v1/predict?mode=sepia", content=good, headers=auth),
                "bad colour": await post("/v1/predict?mode=color&color=red", content=good, headers=auth),
                "endless blur": await post("/v1/predict?mode=blur&blur=inf", content=good, headers=auth),
                "no background": await post("/v1/predict?mode=background", content=good, headers=auth),
                "no image field": await post("/v1/predict", files={"picture": ("p.png", good)}, headers=auth),
                "good": await post("/v1/predict", content=good, headers={"X-API-Key": "s3cret"}),
                "metrics": await client.get("/metrics"),
            }

    responses = run(scenario())
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {"no key": 401, "wrong key": 401, "oversize": 413, "bomb": 413, "not an image": 415,
                        "truncated": 422, "empty": 422, "bad mode": 422, "bad colour": 422, "endless blur": 422,
                        "no background": 422, "no image field": 422, "good": 200, "metrics": 200}
    for name, response in responses.items():
        if response.status_code >= 400:
            assert response.json()["error"]["status"] == response.status_code, name
    assert "pixel limit" in responses["bomb"].json()["error"]["message"]
    assert responses["wrong key"].headers["WWW-Authenticate"] == "Bearer"
    metrics = responses["metrics"].text
    assert 'pgnet_rejections_total{reason="pixels"} 1.0' in metrics
    assert 'pgnet_requests_total{route="/v1/predict",status="401"} 2.0' in metrics


def test_full_queue_is_503_with_retry_after_and_a_late_result_504(serve_predictor, serve_package):
    good = png(picture(4))

    async def scenario():
        async with serving(serve_predictor, serve_package, max_batch=1, max_queue=1, max_wait_ms=0) as client:
            crowd = await asyncio.gather(*(client.post("/v1/predict", content=good) for _ in range(12)))
        async with serving(serve_predictor, serve_package, max_batch=4, max_wait_ms=2000, timeout_s=0.2) as client:
            late = await client.post("/v1/predict", content=good)
        return crowd, late

    crowd, late = run(scenario())
    statuses = [response.status_code for response in crowd]
    assert set(statuses) == {200, 503}, statuses
    refused = next(response for response in crowd if response.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert late.status_code == 504 and "deadline" in late.json()["error"]["message"]


def test_probes_metrics_docs_and_page(serve_predictor, serve_package):
    async def scenario():
        app = create_app(ServeSettings(model=str(serve_package)), serve_predictor)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pgnet") as client:
            before = (await client.get("/readyz"), await client.post("/v1/predict", content=png(picture(5))))
        async with serving(serve_predictor, serve_package) as client:
            after = {path: await client.get(path) for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/")}
        return before, after

    (not_ready, refused), after = run(scenario())
    assert not_ready.status_code == 503 and refused.status_code == 503
    assert all(response.status_code == 200 for response in after.values())
    assert "pgnet_batch_size_bucket" in after["/metrics"].text and "pgnet_queue_depth" in after["/metrics"].text
    assert "/v1/predict" in after["/openapi.json"].json()["paths"]
    page = after["/"].text
    assert 'id="file"' in page and "v1/predict" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere: works offline


class QuickPredictor:
    """The predictor's interface with a stand-in network (a blurred brightness map), for load tests:
    1,000 forward passes of even the tiny PGNet take ~25 s on a shared CPU, and the load test checks the
    service (queueing, decoding, composing, memory), not the network, which the tests above run."""

    size = 64

    def predict_arrays(self, images, sizes):
        return [cv2.resize(cv2.blur(image.mean(axis=2).astype(np.float32) / 255, (5, 5)), (w, h))
                for image, (h, w) in zip(images, sizes)]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the RSS")
@pytest.mark.parametrize(("max_queue", "expected"), [(64, {200}), (2, {200, 503})], ids=["queue-64", "queue-2"])
def test_a_thousand_requests_from_16_clients_all_succeed_and_memory_stays_flat(serve_package, max_queue, expected):
    serve_predictor = QuickPredictor()
    pictures = [png(picture(seed, 32 + seed % 3 * 8, 40 + seed % 4 * 8)) for seed in range(16)]
    rss = {}

    async def scenario():
        statuses: list[int] = []
        async with serving(serve_predictor, serve_package, max_batch=max_queue // 4 or 1, max_queue=max_queue,
                           max_wait_ms=5) as client:

            async def client_loop(index: int) -> None:
                while len(statuses) < 1000:
                    statuses.append(-1)  # claimed
                    slot = len(statuses) - 1
                    mode = "mask" if slot % 2 else "rgba"
                    response = await client.post(f"/v1/predict?mode={mode}", content=pictures[(index + slot) % 16])
                    statuses[slot] = response.status_code
                    if sum(status != -1 for status in statuses) == 100 and "100" not in rss:
                        rss["100"] = resident_mib()

            started = time.perf_counter()
            await asyncio.gather(*(client_loop(index) for index in range(16)))
            rss["1000"] = resident_mib()
            return statuses, time.perf_counter() - started

    statuses, seconds = run(scenario())
    assert len(statuses) == 1000 and set(statuses) == expected
    assert rss["1000"] <= 1.05 * rss["100"], (rss, seconds)
