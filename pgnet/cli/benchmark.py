"""``pgnet-benchmark`` / ``scripts/benchmark.py``: the benchmark suite (inference, a training step, the data
loader and the evaluator, each fast path against the straightforward one; a table and JSON), and single
benchmarks as commands: ``data`` (one loader worker), ``metrics`` (pgnet.metrics against pysodmetrics),
``video`` (video prediction, smoothing, foreground refinement), ``cost`` (a grafting configuration's
cost), ``serve`` (``pgnet-serve`` under load), ``precision`` (the CPU's precisions: speed end to end
and their cost in scores). See ``pgnet.benchmark``.

The handlers import the library (torch, timm) when they run, not at the top, so that ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import EXIT_NOT_DONE, EXIT_STATUS_HELP, build_command_parser, run_command
from pgnet.device import INFERENCE_PRECISIONS

PROG = "pgnet-benchmark"
EXAMPLE = """examples:
  scripts/benchmark.py --quick
  scripts/benchmark.py --device cuda --profile profiles --out results.json
  scripts/benchmark.py --model-config swin=swin_tiny_patch4_window7_224 resnet=resnet18 --skip-train
  scripts/benchmark.py data --n 6 --passes 3          # one loader worker on 3840x2160 JPEGs
  scripts/benchmark.py metrics --n 10 --json m.json   # pgnet.metrics against pysodmetrics
  scripts/benchmark.py video --frames 30              # video prediction, smoothing, foreground refinement
  scripts/benchmark.py cost --graft-points r5-s2 r4-s1:window --out cost.json
  scripts/benchmark.py serve models/dh --clients 16 --seconds 30   # pgnet-serve under load
  scripts/benchmark.py precision --threads 2 --checkpoint runs/demo/checkpoints/best.pth"""


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    parser.add_argument("--size", type=int, help="inference input side (default 1024)")
    parser.add_argument("--batch", type=int, nargs="+", help="inference batch sizes timed path by path (default 1)")
    parser.add_argument("--max-batch", type=int, help="cap of the largest-batch search on CUDA (default 1024)")
    parser.add_argument("--no-largest-batch", action="store_true", help="skip the largest-batch search")
    parser.add_argument("--iterations", type=int, help="timed calls per inference path (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up calls per inference path (default 3)")
    parser.add_argument("--train-size", type=int, help="training input side (default 1088, the worst case)")
    parser.add_argument("--train-batch", type=int, help="training batch (default 8, the official per device)")
    parser.add_argument("--train-iterations", type=int, help="timed training steps per path (default 5)")
    parser.add_argument("--model-config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="ModelConfig overrides, e.g. swin=swin_tiny_patch4_window7_224 resnet=resnet18")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure torch.compile'd fast paths (inference compiled with Inductor freezing); "
                             "on by default, off with --quick")
    parser.add_argument("--compile-mode", help="torch.compile mode instead of freezing, e.g. reduce-overhead")
    parser.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                        help="TF32 for float32 convolutions and matmuls on CUDA (default: PyTorch's settings)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small sizes and a small network: a smoke run")
    for part in ("inference", "train", "loader", "eval"):
        parser.add_argument(f"--skip-{part}", action="store_true", help=f"skip the {part} benchmark")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark.json"),
                        help="JSON output (default runs/benchmark.json)")
    parser.add_argument("--profile", metavar="DIR",
                        help="also profile one call of each inference path and training step (torch.profiler "
                             "operator tables in DIR; on CUDA the kernel count and time go into the JSON)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target that applies is missed")


def _add_command(commands: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=description, description=description, epilog=EXIT_STATUS_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = build_command_parser(
        PROG, "Benchmark PGNet: inference, a training step, the data loader and the evaluator (the suite, "
        "without a command), or one benchmark (a command).", EXAMPLE,
    )
    # The commands have their own flags (--n, --size, ...): an abbreviation of the suite's must not claim them.
    parser.allow_abbrev = False
    _add_suite_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (default: the suite)")

    data = _add_command(commands, "data", "Samples/s of one loader worker (one thread) on the official recipe "
                        "from synthetic WIDTHxHEIGHT JPEGs: full decode, reduced decode, the cache; exits 1 "
                        "when the cache is under 3x full decode.")
    data.add_argument("--n", type=int, default=6, help="number of images")
    data.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    data.add_argument("--width", type=int, default=3840)
    data.add_argument("--height", type=int, default=2160)
    data.add_argument("--size", type=int, default=1024, help="training size of the recipe")
    data.add_argument("--long-side", type=int, default=1280, help="long side of the cache")
    data.add_argument("--batch-size", type=int, default=2)
    data.add_argument("--quality", type=int, default=90, help="JPEG quality of the test images")

    metrics = _add_command(commands, "metrics", "Time pgnet.metrics against pysodmetrics on synthetic "
                           "high-resolution masks, side by side, and compare their results.")
    metrics.add_argument("--n", "--num-images", dest="num_images", type=int, default=200, help="masks (200)")
    metrics.add_argument("--height", type=int, default=1152)
    metrics.add_argument("--width", type=int, default=2048)
    metrics.add_argument("--seed", type=int, default=0)
    metrics.add_argument("--chunk", type=int, default=10, help="masks made and scored per round (10)")
    metrics.add_argument("--threads", type=int, default=1,
                         help="torch and OpenCV threads (default 1, as pysodmetrics; 0: the libraries' defaults)")
    metrics.add_argument("--device", default="cpu", help="device for pgnet.metrics (pysodmetrics: CPU)")
    metrics.add_argument("--skip-pysod", action="store_true", help="time pgnet only")
    metrics.add_argument("--json", type=Path, default=None, help="write the figures here")

    video = _add_command(commands, "video", "Measure video prediction, temporal smoothing and foreground "
                         "refinement on synthetic data (on the CPU).")
    video.add_argument("--checkpoint", help="a checkpoint (default: the official architecture, random weights)")
    video.add_argument("--size", type=int, default=1024)
    video.add_argument("--frames", type=int, default=30)
    video.add_argument("--resolutions", type=_resolutions, default="1280x720,3840x2160", metavar="WxH,...",
                       help="frame sizes to measure (default 720p and 4K)")
    video.add_argument("-b", "--batch-size", type=int, default=1)
    video.add_argument("--skip-video", action="store_true", help="only the foreground refinement figures")
    video.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                       help="the predictor's precision (default auto: bf16 on a CPU that computes it natively)")
    video.add_argument("--calibration", type=Path,
                       help="an int8 calibration (pgnet-calibrate) for --precision int8 or auto")

    precision = _add_command(commands, "precision", "On the CPU: the Predictor at each precision against the "
                             "official code (pictures/s on one SIZE² picture, preprocessing included, timed "
                             "interleaved), and with --checkpoint each precision's scores beside float32's on "
                             "synthetic pictures with masks, judged by the rule auto is held to.")
    precision.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "auto"], choices=INFERENCE_PRECISIONS)
    precision.add_argument("--calibration", type=Path,
                           help="the int8 calibration to time and score with (default: int8's speed calibrated on "
                                "the timed picture, its scores on --calibration-images synthetic training pictures)")
    precision.add_argument("--calibration-images", type=int, default=16,
                           help="synthetic pictures of the demo config's training set (seed 0) int8 is calibrated "
                                "on when scoring (16)")
    precision.add_argument("--size", type=int, default=1024, help="network input and picture side (1024)")
    precision.add_argument("--iterations", type=int, default=5, help="timed calls per path (5)")
    precision.add_argument("--model-config", nargs="+", default=[], metavar="KEY=VALUE",
                           help="ModelConfig overrides of the timed network (default: the official architecture, "
                                "random weights)")
    precision.add_argument("--checkpoint", help="a trained model to score at each precision (scores skipped without)")
    precision.add_argument("--score-images", type=int, default=40, help="synthetic pictures scored (40)")
    precision.add_argument("--score-picture", type=int, default=320, help="their side (320)")
    precision.add_argument("--score-seed", type=int, default=100000,
                           help="their seed (100000: the demo config's validation set)")
    precision.add_argument("--score-size", type=int, help="network input side when scoring (the checkpoint's)")
    precision.add_argument("--skip-speed", action="store_true", help="scores only")
    precision.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    precision.add_argument("--json", type=Path, default=None, help="write the figures here")

    cost = _add_command(commands, "cost", "Cost of one grafting configuration on the CPU: parameters, inference "
                        "GFLOPs and fast-path seconds at SIZE², resident-memory growth of a training step "
                        "(one configuration per process: see pgnet.benchmark.cost).")
    cost.add_argument("--graft-points", nargs="+", default=["r5-s2"], help="model.graft_points (default r5-s2)")
    cost.add_argument("--window-size", type=int, default=8)
    cost.add_argument("--size", type=int, default=1024, help="inference size (default 1024)")
    cost.add_argument("--train-size", type=int, default=512)
    cost.add_argument("--train-batch", type=int, default=2)
    cost.add_argument("--repetitions", type=int, default=3)
    cost.add_argument("--out", help="also write the figures to this JSON file")

    serve = _add_command(commands, "serve", "pgnet-serve under load: C concurrent clients for T seconds against a "
                         "server started on 127.0.0.1; throughput, latency percentiles, responses by status, "
                         "the server's RSS at start and end.")
    serve.add_argument("model", help="a model package folder or a checkpoint")
    serve.add_argument("--clients", type=int, default=8, help="concurrent clients (1-256, default 8)")
    serve.add_argument("--seconds", type=float, default=20.0, help="how long (at most 600, default 20)")
    serve.add_argument("--max-requests", type=int, default=10_000, help="stop after this many requests")
    serve.add_argument("--width", type=int, default=640, help="width of the synthetic JPEG pictures")
    serve.add_argument("--height", type=int, default=480)
    serve.add_argument("--mode", default="mask", help="output mode requested (default mask)")
    serve.add_argument("--device", default="auto", help="the server's device")
    serve.add_argument("--max-batch", type=int, default=8, help="the server's largest batch (1: one at a time)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0)
    serve.add_argument("--max-queue", type=int, default=64)
    serve.add_argument("--threads", type=int, help="the server's torch threads")
    serve.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: Path, value: object) -> None:
    from pgnet.writing import write_text  # here: keeps --help fast (OpenCV)

    write_text(path, json.dumps(value, indent=2) + "\n")


def run_suite(args: argparse.Namespace) -> int:
    """The suite: prints the table and the targets, writes the JSON after every benchmark."""
    # here: keeps --help fast (torch, timm)
    import torch

    from pgnet.benchmark import BenchmarkOptions, run_benchmarks
    from pgnet.benchmark.suite import format_table
    from pgnet.benchmark.targets import format_target, missed
    from pgnet.config import apply_overrides

    model = apply_overrides({}, args.model_config)
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {
        "size": args.size,
        "batches": tuple(args.batch) if args.batch else None,
        "max_batch": args.max_batch,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "train_size": args.train_size,
        "train_batch": args.train_batch,
        "train_iterations": args.train_iterations,
        "compile_mode": args.compile_mode,
        "profile_dir": args.profile,
        "compile": args.compile,
        "model": model or None,
    }
    values = {key: value for key, value in given.items() if value is not None}
    values.update(
        device=args.device,
        tf32={"default": None, "on": True, "off": False}[args.tf32],
        largest_batch=not args.no_largest_batch,
        inference=not args.skip_inference,
        train=not args.skip_train,
        loader=not args.skip_loader,
        evaluator=not args.skip_eval,
    )
    options = BenchmarkOptions.quick(**values) if args.quick else BenchmarkOptions(**values)

    def save(report: dict) -> None:  # after every benchmark: a run cut short keeps its figures
        _write_json(args.out, report)

    report = run_benchmarks(options, log=_log, progress=save)
    env = report["environment"]
    print(f"\n{env['device_name']} ({env['device']}), torch {env['torch']}, timm {env['timm']}, "
          f"{env['torch_threads']} threads, {report['seconds']:.0f} s")
    print(format_table(report["figures"]))
    for target in report["summary"]["targets"]:
        print(format_target(target))
    for error in report["errors"]:
        print(f"failed: {error['benchmark']}: {error['error']}")
    save(report)
    print(f"wrote {args.out}")
    return EXIT_NOT_DONE if report["errors"] or (args.check and missed(report["summary"]["targets"])) else 0


def run_data(args: argparse.Namespace) -> int:
    """One loader worker's samples/s; exits 1 when the cache misses its target."""
    # here: keeps --help fast (torch)
    import torch

    from pgnet.benchmark.loader import format_loader_figures, measure_loader
    from pgnet.benchmark.targets import LOADER_SPEEDUP, format_target, judge

    figures = measure_loader(args.n, args.height, args.width, args.size, args.long_side, args.batch_size,
                             args.passes, quality=args.quality, log=print)
    print("\n" + format_loader_figures(figures))
    # The command's gate: judged whatever the sizes, as scripts/bench_data.py always did.
    result = judge(LOADER_SPEEDUP, LOADER_SPEEDUP.select(figures), LOADER_SPEEDUP.threshold, True, torch.device("cpu"))
    print(format_target(result))
    return 0 if result["met"] else EXIT_NOT_DONE


def run_metrics(args: argparse.Namespace) -> int:
    """pgnet.metrics against pysodmetrics; the figures also as JSON with --json."""
    # here: keeps --help fast (torch, OpenCV)
    from pgnet.benchmark.evaluator import compare_with_pysodmetrics, format_comparison
    from pgnet.benchmark.timing import set_threads
    from pgnet.device import resolve_device

    if args.threads > 0:
        set_threads(args.threads)
    device = resolve_device(args.device, key="--device")
    report = compare_with_pysodmetrics(device, args.num_images, args.height, args.width, args.seed, args.chunk,
                                       pysod=not args.skip_pysod, log=_log)
    print("\n" + format_comparison(report))
    if args.json is not None:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _resolutions(text: str) -> list[tuple[int, int]]:
    """``1280x720,3840x2160`` as [(1280, 720), (3840, 2160)]."""
    try:
        sizes = [tuple(int(side) for side in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[,WIDTHxHEIGHT...], got {text!r}")
    return sizes  # type: ignore[return-value]


def run_video(args: argparse.Namespace) -> int:
    """Video prediction, smoothing and foreground refinement figures, printed."""
    # here: keeps --help fast (torch, timm)
    from pgnet.benchmark.video import measure_foreground_refinement, measure_video, video_predictor

    if not args.skip_video:
        predictor = video_predictor(args.checkpoint, args.size, args.batch_size, args.precision, args.calibration)
        for width, height in args.resolutions:
            measure_video(predictor, args.frames, height, width)
    measure_foreground_refinement()
    return 0


def run_cost(args: argparse.Namespace) -> int:
    """A grafting configuration's cost, printed as JSON (and written with --out)."""
    from pgnet.benchmark.cost import measure_graft_cost  # here: keeps --help fast (torch, timm)

    figures = measure_graft_cost(args.graft_points, args.window_size, args.size, args.train_size, args.train_batch,
                                 args.repetitions)
    print(json.dumps(figures, indent=2))
    if args.out:
        _write_json(Path(args.out), figures)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """pgnet-serve under load; exits 1 when a request failed other than by a 503 of a full queue."""
    from pgnet.benchmark.serve import format_load, serve_benchmark  # here: keeps --help fast (OpenCV, httpx)

    server_args = ["--device", args.device, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                   "--max-queue", str(args.max_queue), *(["--threads", str(args.threads)] if args.threads else [])]
    figures = serve_benchmark(args.model, args.clients, args.seconds, args.max_requests, (args.height, args.width),
                              args.mode, server_args, log=_log)
    print(format_load(figures))
    if args.json is not None:
        _write_json(args.json, figures)
        print(f"wrote {args.json}")
    failed = set(figures["statuses"]) - {"200", "503"} or figures["server_exit_status"] != 0
    return EXIT_NOT_DONE if failed else 0


def run_precision(args: argparse.Namespace) -> int:
    """The precisions' speed against the official code and, with a checkpoint, their scores; printed."""
    # here: keeps --help fast (torch, timm)
    import torch

    from pgnet.benchmark.model import build_benchmark_model
    from pgnet.benchmark.precision import format_precision_figures, measure_precision_scores, measure_predictor_speed
    from pgnet.benchmark.record import environment
    from pgnet.checkpoint import load_model_and_preprocessing
    from pgnet.config import apply_overrides
    from pgnet.data.synthetic import make_sample, sample_seed
    from pgnet.predict.calibration import calibrate_pictures
    from pgnet.predict.int8 import Int8Calibration

    calibration = Int8Calibration.read(args.calibration)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"environment": environment(torch.device("cpu"))}
    if not args.skip_speed:
        model = build_benchmark_model(apply_overrides({}, args.model_config))
        report["speed"] = measure_predictor_speed(model, args.precisions, args.size, iterations=args.iterations,
                                                  calibration=calibration)
    if args.checkpoint:
        model, preprocessing = load_model_and_preprocessing(args.checkpoint, "cpu")
        samples = [make_sample(sample_seed(args.score_seed, index), args.score_picture)
                   for index in range(args.score_images)]
        scored_calibration = calibration
        if "int8" in args.precisions and scored_calibration is None:
            pictures = [make_sample(sample_seed(0, index), args.score_picture)[0]
                        for index in range(args.calibration_images)]
            scored_calibration = calibrate_pictures(model, pictures, args.score_size or preprocessing.eval_size,
                                                    preprocessing)
        report["scores"] = measure_precision_scores(model, samples, args.precisions, args.score_size, preprocessing,
                                                    scored_calibration)
    print(format_precision_figures(report))
    if args.json is not None:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


COMMANDS = {None: run_suite, "data": run_data, "metrics": run_metrics, "video": run_video, "cost": run_cost,
            "serve": run_serve, "precision": run_precision}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":  # python -m pgnet.cli.benchmark
    sys.exit(main())
