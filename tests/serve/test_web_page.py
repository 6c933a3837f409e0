"""The web page at ``/`` in a real browser (headless Chromium driven by Playwright): upload a picture,
wait for the result, download it."""

import os
import shutil
import threading
import time

import cv2
import numpy as np
import pytest
from serve_pictures import picture

from pgnet.serve.app import ServeSettings, create_app

CHROMIUM = os.environ.get("PGNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (make test installs it)")


@pytest.fixture(scope="module")
def server_url(serve_predictor, serve_package):
    """The application under uvicorn in a thread, on a free port of 127.0.0.1."""
    import uvicorn

    app = create_app(ServeSettings(model=str(serve_package)), serve_predictor)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and app.state.service.ready.is_set()):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_upload_a_picture_see_the_result_and_download_it(server_url, serve_predictor, tmp_path):
    image = picture(7, 60, 80)
    source = tmp_path / "photo.jpg"
    cv2.imwrite(str(source), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(server_url + "/")
            page.set_input_files("#file", str(source))  # mode: cut-out (rgba), the page's default
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30000)
            assert page.evaluate("document.getElementById('result').naturalWidth") == 80
            with page.expect_download() as download_info:
                page.click("#download")
            download = download_info.value
            assert download.suggested_filename == "photo_rgba.png"
            saved = tmp_path / "downloaded.png"
            download.save_as(saved)
        finally:
            browser.close()
    result = cv2.imread(str(saved), cv2.IMREAD_UNCHANGED)
    assert result.shape == (60, 80, 4)
    decoded = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB)
    expected_alpha = np.rint(serve_predictor(decoded) * 255)
    assert np.abs(result[:, :, 3].astype(float) - expected_alpha).max() <= 1
