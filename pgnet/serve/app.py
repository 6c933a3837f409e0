"""The HTTP service: ``create_app`` builds the FastAPI application that ``pgnet-serve`` runs.

Routes (docs/serving.md has the details):

- ``POST /v1/predict``: a picture (multipart field ``image``, or the raw request body) in; the output
  picture of one mode of ``pgnet.predict.compose`` (PNG) out, or JSON with the float32 mask;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded and warmed),
  ``GET /metrics`` (Prometheus), ``GET /`` (the web page), ``/docs`` (OpenAPI).

Pictures of concurrent requests are predicted together (``pgnet.serve.batcher.DynamicBatcher``).
Every input the service refuses gets a JSON error ``{"error": {"status", "message"}}`` with its own
status: 401 wrong or missing key, 413 body over the upload limit or picture over the pixel limit
(checked on the header, before decoding), 415 not a picture, 422 a picture that cannot be decoded or
bad options, 503 queue full (with ``Retry-After``) or not ready, 504 past the request deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pgnet.data.io import ImageReadError, ImageTooLargeError, decode_image, probe_image_size
from pgnet.errors import UserError
from pgnet.predict.compose import DEFAULT_BLUR, OUTPUT_MODES, Composer
from pgnet.predict.predictor import Predictor
from pgnet.serve.batcher import DynamicBatcher, QueueFullError
from pgnet.writing import encode_image

SETTINGS_ENV = "PGNET_SERVE_SETTINGS"  # the settings as JSON, for uvicorn's worker processes
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_BLUR = 500.0  # the largest blur sigma a request may ask (larger ones cost without changing the look)


@dataclass
class ServeSettings:
    """What ``pgnet-serve`` runs: the model and how it is served (docs/serving.md)."""

    model: str  # a model package folder, a project checkpoint or an official one
    device: str | None = None  # None: CUDA, then MPS, then the CPU
    precision: str = "auto"
    max_batch: int = 8  # the largest forward pass
    max_wait_ms: float = 10.0  # how long a picture waits for others to fill its batch
    max_queue: int = 64  # pictures waiting; more is 503
    timeout_s: float = 30.0  # request deadline (decoding, queue, prediction, encoding); past it 504
    max_upload_bytes: int = 20 * 2**20  # request body limit; over it 413
    api_key_file: str | None = None  # a file holding the key clients send; None: no key
    cors_origins: list[str] = field(default_factory=list)  # origins allowed by CORS; empty: CORS off
    threads: int | None = None  # torch threads of this process (None: torch's default)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


class ServeError(Exception):
    """A refused request: its HTTP status and a plain message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, reason: str = "invalid"):
        super().__init__(message)
        self.status, self.message, self.headers, self.reason = status, message, headers or {}, reason


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per application)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pgnet_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("pgnet_request_seconds", "Prediction request latency (seconds)", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("pgnet_batch_size", "Pictures per forward pass", registry=self.registry,
                                    buckets=BATCH_BUCKETS)
        self.queue_depth = Gauge("pgnet_queue_depth", "Pictures waiting for a batch", registry=self.registry)
        self.rejections = Counter("pgnet_rejections", "Refused prediction requests by reason", ["reason"],
                                  registry=self.registry)


class Service:
    """The model, its batcher and the service's state, kept on ``app.state.service``."""

    def __init__(self, settings: ServeSettings, predictor: Predictor | None = None):
        self.settings = settings
        self.predictor = predictor
        self.metrics = Metrics()
        self.api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
        self.batcher: DynamicBatcher | None = None
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth if self.batcher else 0)

    def load(self) -> None:
        """Load the model (unless given) and run one warm-up batch (blocking)."""
        if self.settings.threads:
            import torch

            torch.set_num_threads(int(self.settings.threads))
        if self.predictor is None:
            self.predictor = Predictor.from_checkpoint(self.settings.model, self.settings.device,
                                                       precision=self.settings.precision,
                                                       batch_size=self.settings.max_batch)
        # A full batch: the memory of the largest forward pass is taken before the first request.
        size, count = self.predictor.size, self.settings.max_batch
        self.predictor.predict_arrays([np.zeros((size, size, 3), np.uint8)] * count, [(size, size)] * count)

    async def start(self) -> None:
        """Load and warm the model in a thread, then start batching; ``/readyz`` answers 200 after."""
        try:
            await asyncio.to_thread(self.load)
        except Exception as error:  # reported by /readyz; the process stays up to say why
            self.failure = f"{type(error).__name__}: {error}"
            raise
        self.batcher = DynamicBatcher(self.predictor.predict_arrays, self.settings.max_batch,
                                      self.settings.max_wait_ms / 1000, self.settings.max_queue,
                                      on_batch=self.metrics.batch_size.observe)
        self.batcher.start()
        self.ready.set()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()


def read_api_key(path: str | os.PathLike) -> str:
    """The API key held in a file (surrounding whitespace removed); an empty or missing file is a UserError."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"API key file {path}: cannot read it ({error})") from None
    if not key:
        raise UserError(f"API key file {path}: empty")
    return key


def web_page() -> str:
    """The page served at ``/`` (one file, no external resources)."""
    return resources.files("pgnet.serve").joinpath("static/index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Reading a request


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, f"request body of {int(declared)} bytes is over the upload limit of {limit} bytes",
                         reason="too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServeError(413, f"request body is over the upload limit of {limit} bytes", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_upload(request: Request, body: bytes) -> tuple[bytes, bytes | None, dict[str, str]]:
    """(picture bytes, background picture bytes or None, form fields) of a multipart or raw body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body, None, {}
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=2, max_fields=16).parse()
    except MultiPartException as error:
        raise ServeError(422, f"malformed multipart body: {error.message}") from None
    files = {key: await value.read() for key, value in form.multi_items() if hasattr(value, "read")}
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    await form.close()
    if "image" not in files:
        raise ServeError(422, "multipart body without an 'image' file field")
    return files["image"], files.get("background"), fields


def decode(data: bytes, what: str) -> np.ndarray:
    """A picture's bytes as H×W×3 uint8 RGB; 413 over the pixel limit (from the header, before
    decoding), 415 for bytes that are no picture format, 422 for a picture that does not decode."""
    if not data:
        raise ServeError(422, f"empty {what}: send a picture (multipart field 'image' or the raw body)")
    try:
        return decode_image(data, what)
    except ImageTooLargeError as error:
        raise ServeError(413, str(error), reason="pixels") from None
    except ImageReadError:
        if probe_image_size(data) is None:
            raise ServeError(415, f"the {what} sent is in no format OpenCV decodes (PNG, JPEG, WebP, BMP, TIFF, ...)",
                             reason="unsupported") from None
        raise ServeError(422, f"{what}: cannot decode the picture (corrupt or truncated)",
                         reason="undecodable") from None


def composer_for(options: dict[str, str], background: np.ndarray | None) -> Composer:
    """The output mode's composer from the request's options (query or form fields); 422 when invalid."""
    mode = options.get("mode", "mask")
    try:
        blur = float(options.get("blur", DEFAULT_BLUR))
        if not 0 < blur <= MAX_BLUR:  # also refuses nan and inf
            raise ValueError(f"blur must be a sigma in pixels above 0 and at most {MAX_BLUR:g}, got {blur:g}")
        refine = options.get("refine", "false").lower() in ("1", "true", "yes", "on")
        return Composer(mode, options.get("color") or None, background=background, blur=blur,
                        refine_foreground=refine)
    except (UserError, ValueError) as error:
        raise ServeError(422, str(error)) from None


def encode_response(picture: np.ndarray, mask: np.ndarray, as_json: bool, batch_size: int) -> Response:
    """The PNG picture, or JSON with the float32 mask (base64, little-endian, row-major) and its size."""
    headers = {"X-PGNet-Batch-Size": str(batch_size)}
    if as_json:
        height, width = mask.shape
        content = {"width": width, "height": height, "dtype": "float32",
                   "mask": base64.b64encode(mask.astype("<f4").tobytes()).decode("ascii")}
        return JSONResponse(content, headers=headers)
    return Response(encode_image(picture).tobytes(), media_type="image/png", headers=headers)


# --------------------------------------------------------------------------------------------------
# The application


class RequestMetrics:
    """ASGI middleware counting responses by route and status (the route template, not the raw path)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            self.metrics.requests.labels(path, str(status["code"])).inc()


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"},
                "background": {"type": "string", "format": "binary", "description": "for mode=background"},
                "mode": {"type": "string", "enum": list(OUTPUT_MODES)},
                "color": {"type": "string"}, "blur": {"type": "number"}, "refine": {"type": "boolean"},
            }}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": "mode", "in": "query", "schema": {"type": "string", "enum": list(OUTPUT_MODES), "default": "mask"}},
        {"name": "color", "in": "query", "schema": {"type": "string"}, "description": "#RRGGBB or R,G,B"},
        {"name": "blur", "in": "query", "schema": {"type": "number", "default": DEFAULT_BLUR}},
        {"name": "refine", "in": "query", "schema": {"type": "boolean", "default": False}},
        {"name": "response", "in": "query", "schema": {"type": "string", "enum": ["png", "json"], "default": "png"},
         "description": "json: the float32 mask, base64, with its width and height"},
    ],
    "responses": {"200": {"content": {"image/png": {}, "application/json": {}}}},
}


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    """The application serving ``settings.model`` (or the given ``predictor``, already loaded)."""
    service = Service(settings, predictor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(service.start())
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
            await service.stop()

    app = FastAPI(title="pgnet", summary="Salient object detection with PGNet", lifespan=lifespan)
    app.state.service = service
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(RequestMetrics, metrics=service.metrics)

    @app.exception_handler(ServeError)
    async def refused(request: Request, error: ServeError) -> JSONResponse:
        service.metrics.rejections.labels(error.reason).inc()
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:  # a bug: logged by uvicorn, JSON here
        return error_response(500, f"internal error ({type(error).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(str(item.get("msg")) for item in error.errors()))

    def check_key(request: Request) -> None:
        if service.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not hmac.compare_digest(given.encode("utf-8"), service.api_key.encode("utf-8")):
            raise ServeError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                             {"WWW-Authenticate": "Bearer"}, reason="unauthorized")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(web_page())

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed")
    async def readyz() -> JSONResponse:
        if service.ready.is_set():
            return JSONResponse({"status": "ready"})
        message = f"model failed to load: {service.failure}" if service.failure else "loading the model"
        return error_response(503, message)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info", summary="The model served and the limits")
    async def info(request: Request) -> dict[str, Any]:
        check_key(request)
        predictor = service.predictor
        return {"model": Path(settings.model).name, "modes": list(OUTPUT_MODES), "ready": service.ready.is_set(),
                "size": predictor.size if predictor else None, "max_batch": settings.max_batch,
                "max_upload_bytes": settings.max_upload_bytes}

    @app.post("/v1/predict", summary="Predict a picture's saliency and compose the output", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        check_key(request)
        if not service.ready.is_set() or service.batcher is None:
            raise ServeError(503, "the model is still loading", {"Retry-After": "5"}, reason="not_ready")
        try:
            async with asyncio.timeout(settings.timeout_s):
                body = await read_body(request, settings.max_upload_bytes)
                response = await answer(request, body)
        except TimeoutError:
            raise ServeError(504, f"no result within the request deadline of {settings.timeout_s:g} s",
                             reason="deadline") from None
        service.metrics.latency.labels("/v1/predict").observe(time.perf_counter() - started)
        return response

    async def answer(request: Request, body: bytes) -> Response:
        data, background_data, fields = await parse_upload(request, body)
        options = {**request.query_params, **fields}
        image = await asyncio.to_thread(decode, data, "picture")
        background = await asyncio.to_thread(decode, background_data, "background picture") \
            if background_data else None
        composer = composer_for(options, background)
        as_json = options.get("response", "png") == "json" or request.headers.get("accept") == "application/json"
        try:
            result = await service.batcher.submit(image, image.shape[:2])
        except QueueFullError as error:
            raise ServeError(503, f"busy: {error}; retry later", {"Retry-After": "1"}, reason="queue_full") from None
        picture = None if as_json else await asyncio.to_thread(composer, image, result.mask)
        return encode_response(picture, result.mask, as_json, result.batch_size)

    return app


def app_from_environment() -> FastAPI:
    """The application for uvicorn's worker processes: settings from ``PGNET_SERVE_SETTINGS``."""
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))
