"""What several test files share: small pictures and dataset folders on disk, the datasets/ scripts,
and a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import io
import runpy
import struct
import threading
from pathlib import Path

import cv2
import numpy as np

from pgnet.data.synthetic import make_sample
from pgnet.writing import write_image


def write_pair(image_path: Path, mask_path: Path, size=(48, 40), seed=0) -> None:
    image, mask = make_sample(seed, size)
    write_image(image_path, image)
    write_image(mask_path, mask)


def huge_png(path: Path, side: int = 20000) -> Path:
    """A small PNG whose header claims side×side pixels (its data is that of an 8×8 picture)."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", side, side)
    path.write_bytes(bytes(data))
    return path


def huge_hdr(path: Path, side: int = 12000) -> Path:
    """A small Radiance HDR file (whatever ``path``'s suffix) whose header claims side×side pixels:
    OpenCV recognises it by content and would allocate the whole float picture to decode it."""
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (side, side) + bytes(64))
    return path


REPO = Path(__file__).resolve().parents[1]


def write(path: Path, array: np.ndarray, *parameters: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, array, list(parameters))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def make_folder(root: Path, count: int = 4, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """root/image/<stem>.jpg + root/mask/<stem>.png, synthetic."""
    for index in range(count):
        image, mask = make_sample(seed * 1000 + index, size)
        write(
            root / "image" / f"s{index:02d}.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), cv2.IMWRITE_JPEG_QUALITY, 95
        )
        write(root / "mask" / f"s{index:02d}.png", mask)
    return root


def script(name: str) -> dict:
    """The names a datasets/ script defines (its main, build_parser ...), without running it."""
    return runpy.run_path(str(REPO / "datasets" / f"{name}.py"), run_name=f"datasets_{name}")


@contextlib.contextmanager
def serve_folder(folder: Path):
    """An HTTP server on 127.0.0.1 serving ``folder``, with Range requests (``bytes=N-``); yields
    (base URL, the Range headers it received)."""
    ranges: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):  # quiet
            pass

        def send_head(self):
            header = self.headers.get("Range")
            path = Path(self.translate_path(self.path))
            if header is None or not path.is_file():
                return super().send_head()
            ranges.append(header)
            start = int(header.removeprefix("bytes=").rstrip("-"))
            data = path.read_bytes()
            if start >= len(data):
                self.send_error(416)
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            return io.BytesIO(data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ranges
    finally:
        server.shutdown()
        server.server_close()
