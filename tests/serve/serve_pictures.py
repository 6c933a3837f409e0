"""Small pictures the serving tests send."""

import cv2
import numpy as np


def picture(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A random H×W×3 uint8 RGB picture with a bright square (something salient)."""
    rng = np.random.default_rng(seed)
    image = (rng.random((height, width, 3)) * 120).astype(np.uint8)
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = rng.integers(150, 256, 3, dtype=np.uint8)
    return image


def png(image: np.ndarray) -> bytes:
    """``image`` (RGB or RGBA) as PNG bytes."""
    conversion = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
    return cv2.imencode(".png", cv2.cvtColor(image, conversion))[1].tobytes()


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side×side black pixels: a few kB that decode to side² pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" * (1 + side // 8)) * side  # each row: filter byte, then side bits
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def json_mask(response) -> np.ndarray:
    """The float32 mask of a ``response=json`` answer."""
    import base64

    content = response.json()
    mask = np.frombuffer(base64.b64decode(content["mask"]), "<f4")
    return mask.reshape(content["height"], content["width"])
