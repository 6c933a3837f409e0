"""``pgnet-serve``: an HTTP API (and a web page) predicting with a model package or a checkpoint.

The application is ``pgnet.serve.app``; this module parses the options and runs it under uvicorn.
docs/serving.md has the API, the limits and how to run replicas.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-serve"
EXIT_STATUSES = ("exit status: 0 stopped (SIGTERM or Ctrl-C: requests in flight are finished first); "
                 "2 usage error (a bad option, model or key file); 3 the server could not start (the port is taken)")


def build_parser() -> argparse.ArgumentParser:
    """``MODEL [--host 127.0.0.1] [--port 8000] [--device D] [--workers N] [--max-batch B] ...``."""
    parser = build_command_parser(
        PROG, "Serve a PGNet model over HTTP: POST /v1/predict, /healthz, /readyz, /metrics, a web page at /.",
        "Example: pgnet-serve models/dh --port 8000   (then open http://127.0.0.1:8000/)", EXIT_STATUSES)
    parser.add_argument("model", help="a model package folder (pgnet-export --format package) or a checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda:N: one process "
                        "per GPU")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                        help="auto: bf16 on CUDA and on a CPU with native bfloat16, int8 there with the package's "
                        "int8 calibration when its check held; fp32 elsewhere")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, each with its own model (CPU serving; use one per GPU otherwise)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's, divided among "
                        "the workers)")
    batching = parser.add_argument_group("batching and limits")
    batching.add_argument("--max-batch", type=int, default=8, help="largest forward pass (default 8)")
    batching.add_argument("--max-wait-ms", type=float, default=10.0,
                          help="how long a picture waits for others to fill its batch (default 10)")
    batching.add_argument("--max-queue", type=int, default=64,
                          help="pictures waiting for a batch; beyond it 503 with Retry-After (default 64)")
    batching.add_argument("--timeout", type=float, default=30.0, help="request deadline in seconds; past it 504")
    batching.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit in MiB; over it 413")
    batching.add_argument("--max-pixels", type=float, metavar="N",
                          help="refuse pictures over N pixels (413) from their header, before decoding "
                          "(default 100e6)")
    security = parser.add_argument_group("security")
    security.add_argument("--api-key-file", help="require the key held in this file (Authorization: Bearer KEY)")
    security.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                          help="allow this origin to call the API from a browser (repeat; default: CORS off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGTERM or Ctrl-C; the exit statuses are in ``--help``."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    import uvicorn

    from pgnet.data.io import set_max_pixels
    from pgnet.errors import UserError
    from pgnet.serve.app import SETTINGS_ENV, ServeSettings, create_app, read_api_key

    for name in ("workers", "max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.timeout <= 0 or args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise UserError("--timeout and --max-upload-mb must be positive, --max-wait-ms at least 0")
    if args.api_key_file:
        read_api_key(args.api_key_file)  # a missing or empty key file is a usage error before serving
    if args.max_pixels is not None:
        set_max_pixels(int(args.max_pixels))  # in the environment: worker processes inherit it
    threads = args.threads
    if threads is None and args.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    settings = ServeSettings(
        model=args.model, device=None if args.device == "auto" else args.device, precision=args.precision,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * 2**20), api_key_file=args.api_key_file,
        cors_origins=list(args.cors_origin), threads=threads)
    options = {"host": args.host, "port": args.port, "timeout_graceful_shutdown": args.timeout + 5,
               "log_level": "info"}
    if args.workers == 1:
        from pgnet.predict.predictor import Predictor

        # Loaded before listening, so that a bad model is a usage error (exit 2), not a server that never gets ready.
        predictor = Predictor.from_checkpoint(args.model, settings.device, precision=args.precision,
                                              batch_size=args.max_batch)
        app, options["workers"] = create_app(settings, predictor), 1
    else:
        os.environ[SETTINGS_ENV] = settings.to_json()
        app, options["workers"], options["factory"] = "pgnet.serve.app:app_from_environment", args.workers, True
    # uvicorn re-raises SIGTERM after its graceful shutdown; a handler of our own makes that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    uvicorn.run(app, **options)
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.serve
    sys.exit(main())
