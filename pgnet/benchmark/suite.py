"""The benchmark suite: every selected benchmark in one run, its report, and the report as a table.

Each measurement returns figures (:func:`pgnet.benchmark.record.figure`); the report gathers them with
the environment, the options, the errors of benchmarks that failed, and the targets' summary
(:mod:`pgnet.benchmark.targets`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from pgnet.benchmark.evaluator import measure_evaluator
from pgnet.benchmark.inference import default_inference_variants, measure_inference, measure_largest_batch
from pgnet.benchmark.loader import measure_loader
from pgnet.benchmark.memory import release_memory
from pgnet.benchmark.model import build_benchmark_model
from pgnet.benchmark.options import BenchmarkOptions
from pgnet.benchmark.record import environment
from pgnet.benchmark.targets import summarize
from pgnet.benchmark.timing import tf32
from pgnet.benchmark.training import TrainVariant, default_train_variants, measure_train_step
from pgnet.device import resolve_device
from pgnet.models.pgnet import ModelConfig


def run_benchmarks(
    options: BenchmarkOptions,
    log: Callable[[str], None] = print,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every selected benchmark; returns {environment, options, model, figures, errors, summary, seconds}.

    A benchmark that raises is logged and listed in ``errors``, and the others still run;
    ``progress`` gets the report so far after each benchmark (to save partial results).
    """
    device = resolve_device(options.device, key="--device")
    started = time.perf_counter()
    figures: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []

    def report() -> dict[str, Any]:
        return {
            "environment": env,
            "options": asdict(options),
            "model": {**ModelConfig().to_dict(), **options.model},
            "figures": figures,
            "errors": errors,
            "summary": summarize(figures, options, device),
            "seconds": time.perf_counter() - started,
        }

    with tf32(options.tf32):
        env = environment(device)
        model = build_benchmark_model(options.model, options.seed)
        variants = default_inference_variants(device, options.compile)
        fastest_eager = next(v for v in reversed(variants) if not (v.compile or v.cuda_graphs))
        steps: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []
        if options.inference:
            steps += [
                (f"inference: {len(variants)} paths at batch {batch}, {options.size}x{options.size}",
                 lambda batch=batch: measure_inference(
                     model, device, variants, options.size, batch, options.iterations, options.warmup,
                     options.compile_mode, options.seed, options.profile_dir,
                 ))
                for batch in options.batches
            ]
            if device.type == "cuda" and options.largest_batch:
                steps += [
                    (f"inference: largest batch of {variant.name} (up to {options.max_batch})",
                     lambda variant=variant: [measure_largest_batch(
                         model, device, variant, options.size, options.max_batch, min(options.iterations, 5),
                         options.batch_tolerance, options.seed,
                     )])
                    for variant in (variants[0], fastest_eager)
                ]
        if options.train:
            baseline: dict[str, float] = {}  # the first (straightforward) step's time

            def train_step(variant: TrainVariant) -> list[dict[str, Any]]:
                model.cpu()  # the template stays off the device; each variant trains a copy
                limit = options.train_memory_limit_gib if variant.swin_grad_checkpointing else None
                result = measure_train_step(
                    model, device, variant, options.train_size, options.train_batch, options.train_iterations,
                    options.train_warmup, baseline.get("median_ms"), options.compile_mode, limit, options.seed,
                    options.profile_dir,
                )
                if not baseline and result["value"] is not None:
                    baseline["median_ms"] = result["median_ms"]
                    result["speedup"] = 1.0
                return [result]

            steps += [
                (f"training step: {variant.name}, batch {options.train_batch}, "
                 f"{options.train_size}x{options.train_size}", lambda variant=variant: train_step(variant))
                for variant in default_train_variants(device, options.compile)
            ]
        if options.loader:
            steps.append((
                f"data loader: {options.loader_images} {options.loader_width}x{options.loader_height} JPEGs",
                lambda: measure_loader(
                    options.loader_images, options.loader_height, options.loader_width, options.loader_size,
                    batch_size=options.loader_batch, passes=options.loader_passes, sizes=options.loader_sizes,
                ),
            ))
        if options.evaluator:
            steps.append((
                f"evaluator: {options.eval_images} predictions of {options.eval_size}x{options.eval_size}",
                lambda: [measure_evaluator(device, options.eval_size, options.eval_images)],
            ))
        for description, step in steps:
            log(description)
            try:
                figures.extend(step())
            except Exception as error:  # one failed benchmark must not lose the others
                errors.append({"benchmark": description, "error": f"{type(error).__name__}: {error}"})
                log(f"  failed: {type(error).__name__}: {error}")
            release_memory(device)
            if progress is not None:
                progress(report())
    return report()


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
