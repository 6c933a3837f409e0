"""``scripts/benchmark.py``: inference, a training step, the data loader and the evaluator, each fast path
against the straightforward one; prints a table and writes JSON (see ``pgnet.benchmark``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--model-config takes KEY=VALUE items, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark PGNet: inference, a training step, the data loader and the evaluator.",
        epilog="Examples: scripts/benchmark.py --quick; scripts/benchmark.py --device cuda --out results.json; "
        "scripts/benchmark.py --model-config swin=swin_tiny_patch4_window7_224 resnet=resnet18 --skip-train",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
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
    return parser


def format_table(figures: Sequence[dict[str, Any]]) -> str:
    """One line per figure: what, value and unit, median time, peak memory, speedup, difference."""
    lines = [f"{'benchmark':24s} {'path':44s} {'batch':>5s} {'value':>10s} {'unit':22s} {'median ms':>10s} "
             f"{'peak MiB':>9s} {'speedup':>8s} {'max |Δp|':>9s}"]
    for f in figures:
        value = "-" if f["value"] is None else f"{f['value']:.2f}"
        median = f"{f['median_ms']:.1f}" if "median_ms" in f else "-"
        peak = f"{f['peak_memory_mib']:.0f}" if f.get("peak_memory_mib") is not None else "-"
        speedup = f"{f['speedup']:.2f}x" if f.get("speedup") is not None else "-"
        diff = f"{f['max_abs_diff_probability']:.1e}" if "max_abs_diff_probability" in f else "-"
        batch = str(f.get("batch", "-"))
        lines.append(f"{f['benchmark']:24s} {f['name']:44s} {batch:>5s} {value:>10s} {f['unit']:22s} {median:>10s} "
                     f"{peak:>9s} {speedup:>8s} {diff:>9s}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch

    from pgnet.benchmark import BenchmarkOptions, run_benchmarks

    try:
        model = _model_overrides(args.model_config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    }
    values: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    values.update(
        device=args.device,
        tf32={"default": None, "on": True, "off": False}[args.tf32],
        largest_batch=not args.no_largest_batch,
        inference=not args.skip_inference,
        train=not args.skip_train,
        loader=not args.skip_loader,
        evaluator=not args.skip_eval,
    )
    if args.compile is not None:
        values["compile"] = args.compile
    if model:
        values["model"] = model
    options = BenchmarkOptions.quick(**values) if args.quick else BenchmarkOptions(**values)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def save(report: dict[str, Any]) -> None:  # after every benchmark: a run cut short keeps its figures
        from pgnet.outputs import write_text

        write_text(args.out, json.dumps(report, indent=2) + "\n")

    try:
        report = run_benchmarks(options, log=log, progress=save)
    except (KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = report["environment"]
    print(f"\n{env['device_name']} ({env['device']}), torch {env['torch']}, timm {env['timm']}, "
          f"{env['torch_threads']} threads, {report['seconds']:.0f} s")
    print(format_table(report["figures"]))
    missed = []
    for target in report["summary"]["targets"]:
        verdict = {True: "met", False: "MISSED", None: "-"}[target["met"]]
        if not target["applies"]:
            verdict = "not judged: measured at other sizes than the target names"
        measured = "-" if target["measured"] is None else f"{target['measured']:.2f}"
        print(f"target: {target['target']}: {measured} (required {target['required']}): {verdict}")
        if target["applies"] and target["met"] is False:
            missed.append(target["target"])
    for error in report["errors"]:
        print(f"failed: {error['benchmark']}: {error['error']}")
    save(report)
    print(f"wrote {args.out}")
    return 1 if report["errors"] or (args.check and missed) else 0


if __name__ == "__main__":  # python -m pgnet.cli.benchmark
    sys.exit(main())
