"""The benchmark suite at tiny sizes on the CPU: the fast inference paths against the straightforward one,
the training step with Swin checkpointing, the loader and evaluator figures, the CLI's JSON."""

import json
import mmap
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pgnet.benchmark import suite
from pgnet.benchmark.evaluator import measure_evaluator
from pgnet.benchmark.inference import default_inference_variants, measure_inference, prepare_for_variant
from pgnet.benchmark.loader import measure_loader
from pgnet.benchmark.memory import ResidentPeak, find_largest_batch, is_too_large, resident_mib
from pgnet.benchmark.model import SMALL_MODEL, build_benchmark_model
from pgnet.benchmark.options import BenchmarkOptions
from pgnet.benchmark.precision import (
    AUTO_RULE_MEAN_PROBABILITY,
    AUTO_RULE_SCORE,
    SCORES,
    format_precision_figures,
    measure_precision_scores,
    measure_predictor_speed,
)
from pgnet.benchmark.record import environment
from pgnet.benchmark.targets import LOADER_SPEEDUP, TARGETS, summarize
from pgnet.benchmark.training import default_train_variants, measure_train_step
from pgnet.cli.benchmark import build_parser, main
from pgnet.data.synthetic import make_sample
from pgnet.device import CPU_BF16_VARIABLE
from pgnet.models.layers import fold_batchnorm

CPU = torch.device("cpu")
FIGURE_KEYS = {"benchmark", "name", "value", "unit", "device", "device_name", "dtype", "torch", "timm"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads stall each other's parallel regions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model():
    return build_benchmark_model(SMALL_MODEL)


def check_figure(figure: dict) -> None:
    assert FIGURE_KEYS <= figure.keys()
    assert figure["value"] > 0
    assert figure["torch"] == torch.__version__
    json.dumps(figure)  # plain JSON values only


def test_fast_inference_paths_match_the_straightforward_path(small_model):
    variants = default_inference_variants(CPU)
    softmax_calls = []
    hook = small_model.decoder.graft.cmgm.softmax.register_forward_hook(lambda *_: softmax_calls.append(1))
    try:
        figures = measure_inference(small_model, CPU, variants, size=96, batch=2, iterations=2, warmup=1)
    finally:
        hook.remove()
    # The straightforward path materialises the attention (1 warm-up, 1 compared, 2 timed calls); no fast path does.
    assert len(softmax_calls) == 4
    assert [f["name"] for f in figures] == [v.name for v in variants]
    assert figures[0]["variant"]["attention"] and not any(f["variant"]["attention"] for f in figures[1:])
    fast = figures[-1]["variant"]
    assert fast["channels_last"] and fast["fold_batchnorm"] and fast["swin_sdpa"] and not fast["compile"]
    for figure in figures:
        check_figure(figure)
        assert (figure["batch"], figure["size"], figure["iterations"], figure["dtype"]) == (2, 96, 2, "float32")
        assert figure["unit"] == "images/s" and figure["peak_memory_mib"] is None  # no CUDA
        assert figure["value"] == pytest.approx(2000 / figure["median_ms"])
    assert figures[0]["speedup"] == 1.0 and figures[0]["max_abs_diff_logits"] == 0.0
    for figure in figures[1:]:
        assert figure["speedup"] == pytest.approx(figures[0]["median_ms"] / figure["median_ms"])
        assert figure["max_abs_diff_probability"] <= 1e-4
        assert figure["max_abs_diff_logits"] <= 1e-4
        assert figure["max_abs_diff_side_logits"] <= 1e-4
        assert 1 < figure["reference_logit_range"] < 100  # BatchNorm calibrated: logits at a trained network's scale


def test_fast_inference_paths_match_with_grafting_at_every_level():
    model = build_benchmark_model(
        {**SMALL_MODEL, "graft_points": ["r5-s2", "r4-s1:window", "r3-s1", "r2-s1"], "window_size": 4}
    )
    assert model.decoder.cnn2_graft.expand.weight.abs().sum() > 0  # the grafts count in the outputs
    variants = default_inference_variants(CPU)
    figures = measure_inference(model, CPU, variants, size=88, batch=1, iterations=1, warmup=1)
    for figure in figures[1:]:
        assert figure["max_abs_diff_logits"] <= 1e-4 and figure["max_abs_diff_side_logits"] <= 1e-4


def test_model_preparation_folds_batchnorm_and_fuses_swin_attention_on_a_copy(small_model):
    folded = prepare_for_variant(small_model.eval(), fold_bn=True)
    left = [name for name, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == ["decoder.graft.cmgm.attention_norm"]  # only the attention branch, unused at inference
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in small_model.resnet.layer1.modules())  # a copy
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected, actual = small_model(image), folded(image)
    torch.testing.assert_close(actual.pred, expected.pred, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(actual.side_cnn, expected.side_cnn, rtol=1e-5, atol=1e-4)
    fused = prepare_for_variant(small_model, swin_sdpa=True)
    switched = [m.fused_attn for m in fused.swin.modules() if hasattr(m, "fused_attn")]
    assert switched and all(switched)
    assert not any(m.fused_attn for m in small_model.swin.modules() if hasattr(m, "fused_attn"))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(small_model.train())
    small_model.eval()


def test_train_step_with_swin_checkpointing_matches_eager(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    eager_variant, checkpointed_variant = default_train_variants(CPU)
    eager = measure_train_step(small_model, CPU, eager_variant, size=64, batch=2, iterations=1, warmup=1)
    checkpointed = measure_train_step(
        small_model, CPU, checkpointed_variant, size=64, batch=2, iterations=1, warmup=1, baseline_ms=eager["median_ms"]
    )
    for figure in (eager, checkpointed):
        check_figure(figure)
        assert figure["benchmark"] == "train_step" and (figure["batch"], figure["size"]) == (2, 64)
        assert figure["losses_finite"] and len(figure["losses"]) == 2
    assert checkpointed["variant"]["swin_grad_checkpointing"] and not eager["variant"]["swin_grad_checkpointing"]
    assert checkpointed["speedup"] == pytest.approx(eager["median_ms"] / checkpointed["median_ms"])
    # Same weights, input and RNG: the same losses step after step.
    assert checkpointed["losses"] == pytest.approx(eager["losses"], rel=1e-5)
    # The template is copied, never trained or switched.
    assert not small_model.swin.grad_checkpointing
    assert all(torch.equal(before[k], v) for k, v in small_model.state_dict().items())


def test_largest_batch_search():
    calls = []

    def fits(batch: int) -> bool:
        calls.append(batch)
        return batch <= 37

    assert find_largest_batch(fits, limit=1024) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64] and max(calls) == 64
    assert find_largest_batch(lambda b: b <= 37, limit=20) == 20
    assert find_largest_batch(lambda b: True, limit=16) == 16
    assert find_largest_batch(lambda b: False, limit=16) == 0
    assert 640 <= find_largest_batch(lambda b: b <= 700, limit=1000, tolerance=0.1) <= 700
    assert is_too_large(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_too_large(RuntimeError("shape mismatch"))


def test_loader_and_evaluator_figures():
    threads = torch.get_num_threads()
    loader = measure_loader(n=2, height=96, width=128, size=64, long_side=96, passes=1, sizes=(64,))
    assert torch.get_num_threads() == threads  # one worker's single thread, restored afterwards
    assert [f["name"] for f in loader] == ["full_decode", "reduced_decode", "cached"]
    for figure in loader:
        check_figure(figure)
        assert figure["benchmark"] == "loader" and figure["unit"] == "samples/s per worker"
    assert loader[0]["speedup"] == 1.0
    evaluator = measure_evaluator(CPU, size=64, num_images=3)
    check_figure(evaluator)
    assert evaluator["unit"] == "images/s" and 0 < evaluator["maxFm"] <= 1


def test_cli_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["--quick", "--device", "cpu", "--size", "64", "--train-size", "64", "--train-iterations", "1",
                 "--skip-loader", "--iterations", "1", "--out", str(out), "--profile", str(tmp_path / "profiles")])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"] == torch.__version__
    assert report["model"]["swin"] == SMALL_MODEL["swin"]
    assert {f["benchmark"] for f in report["figures"]} == {"inference", "train_step", "evaluator"}
    for figure in report["figures"]:
        check_figure(figure)
    # --profile: an operator table per inference path and training step, named in its figure
    profiled = [f for f in report["figures"] if f["benchmark"] != "evaluator"]
    assert sorted(Path(f["profile"]).name for f in profiled) == sorted(
        [f"inference_b1_{f['name']}.txt" for f in profiled if f["benchmark"] == "inference"]
        + [f"train_{f['name']}.txt" for f in profiled if f["benchmark"] == "train_step"]
    )
    for f in profiled:
        table = Path(f["profile"]).read_text()
        assert "aten::" in table and "Self CPU" in table
    assert "aten::_scaled_dot_product" in Path(report["figures"][2]["profile"]).read_text()  # the fast path
    (target,) = report["summary"]["targets"]
    assert target["required"] == 1.3 and not target["applies"]  # judged at 1024×1024 only
    assert "eager_fp32_official" in capsys.readouterr().out and report["errors"] == []
    assert main(["--model-config", "swin", "--out", str(out)]) == 2


def test_a_failing_benchmark_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluator broke")

    monkeypatch.setattr(suite, "measure_evaluator", broken)
    out = tmp_path / "partial.json"
    code = main(["--quick", "--device", "cpu", "--skip-inference", "--skip-train", "--out", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["errors"] == [{"benchmark": "evaluator: 4 predictions of 128x128",
                                 "error": "RuntimeError: evaluator broke"}]
    assert [f["benchmark"] for f in report["figures"]] == ["loader"] * 3


def test_gpu_targets_are_judged_from_the_figures():
    """The CUDA summary, from figures as a GPU run writes them (no GPU needed)."""
    cuda = torch.device("cuda")

    def made(benchmark_name, name, value, amp=None, checkpointing=False, **details):
        variant = {"amp_dtype": amp, "swin_grad_checkpointing": checkpointing}
        return {"benchmark": benchmark_name, "name": name, "value": value, "variant": variant, **details}

    figures = [
        made("inference", "eager_fp32_official", 50.0, batch=1, speedup=1.0),
        made("inference", "fast_bf16", 160.0, "bfloat16", batch=1, speedup=3.2),
        made("inference_largest_batch", "eager_fp32_official", 100.0, batch=300),
        made("inference_largest_batch", "fast_bf16", 250.0, "bfloat16", batch=700),
        made("train_step", "eager_fp32", 20.0, speedup=1.0),
        made("train_step", "bf16_channels_last", 38.0, "bfloat16", speedup=1.9),
        made("train_step", "bf16_channels_last_swin_checkpointing", None, "bfloat16", True, error="out of memory"),
    ]
    targets = {t["target"]: t for t in summarize(figures, BenchmarkOptions(), cuda)["targets"]}
    assert targets["gpu bf16 inference speedup at batch 1"]["met"] is True
    assert targets["gpu bf16 inference speedup at the largest batch"]["measured"] == 2.5
    assert targets["gpu bf16 inference speedup at the largest batch"]["met"] is False
    assert targets["gpu training step speedup"]["met"] is False
    memory = targets["training step fits in the memory limit (peak GiB reserved)"]
    assert memory["met"] is False and memory["error"] == "out of memory" and memory["applies"]
    figures[-1].update(value=30.0, peak_reserved_mib=9.0 * 1024)
    options = BenchmarkOptions(train_batch=4)
    targets = {t["target"]: t for t in summarize(figures, options, cuda)["targets"]}
    memory = targets["training step fits in the memory limit (peak GiB reserved)"]
    assert memory["met"] is True and memory["measured"] == 9.0 and not memory["applies"]  # not batch 8


def loader_figures(speedup: float) -> list[dict]:
    return [{"benchmark": "loader", "name": "full_decode", "value": 10.0, "speedup": 1.0},
            {"benchmark": "loader", "name": "cached", "value": 10.0 * speedup, "speedup": speedup}]


def test_the_targets_table_names_each_threshold_and_where_it_comes_from():
    assert len({target.name for target in TARGETS}) == len(TARGETS)
    for target in TARGETS:
        assert target.source and target.unit and (target.threshold is not None) != bool(target.threshold_option)
    # A figure above the threshold meets the target, one below misses it; both judged at the official sizes.
    for speedup, met in ((3.5, True), (2.5, False)):
        (result,) = summarize(loader_figures(speedup), BenchmarkOptions(), CPU)["targets"]
        assert (result["target"], result["measured"], result["met"], result["applies"]) == (
            LOADER_SPEEDUP.name, speedup, met, True)
        assert (result["required"], result["unit"], result["source"]) == (3.0, "x", LOADER_SPEEDUP.source)
    (result,) = summarize(loader_figures(3.5), BenchmarkOptions.quick(), CPU)["targets"]
    assert result["met"] and not result["applies"]  # measured at other sizes
    # The summary reads the thresholds from the table it is given.
    strict = replace(LOADER_SPEEDUP, threshold=5.0)
    (result,) = summarize(loader_figures(3.5), BenchmarkOptions(), CPU, targets=(strict,))["targets"]
    assert result["required"] == 5.0 and result["met"] is False
    # CPU inference: the fastest path within 1e-4 in probability is judged; GPU rows are not judged on the CPU.
    figures = [{"benchmark": "inference", "name": name, "batch": 1, "speedup": speedup,
                "max_abs_diff_probability": diff, "max_abs_diff_logits": diff, "variant": {"amp_dtype": None}}
               for name, speedup, diff in (("eager_fp32_official", 1.0, 0.0), ("fast_fp32", 1.25, 1e-5),
                                           ("inexact", 2.0, 1e-2))]
    (result,) = summarize(figures, BenchmarkOptions(), CPU)["targets"]
    assert (result["path"], result["measured"], result["met"]) == ("fast_fp32", 1.25, False)
    figures[1]["speedup"] = 1.4
    assert summarize(figures, BenchmarkOptions(), CPU)["targets"][0]["met"] is True
    # A threshold from the options: none given, not judged.
    memory = [{"benchmark": "train_step", "name": "checkpointed", "value": 1.0, "peak_reserved_mib": 8 * 1024,
               "variant": {"amp_dtype": "bfloat16", "swin_grad_checkpointing": True}}]
    cuda = torch.device("cuda")
    (result,) = summarize(memory, BenchmarkOptions(train_memory_limit_gib=7.5), cuda)["targets"]
    assert (result["required"], result["measured"], result["met"]) == (7.5, 8.0, False)
    assert summarize(memory, BenchmarkOptions(train_memory_limit_gib=None), cuda)["targets"] == []


def test_benchmark_commands_parse_their_flags():
    parser = build_parser()
    args = parser.parse_args(["--device", "cuda", "--profile", "profiles", "--out", "results.json"])
    assert (args.command, args.device, args.profile, args.out) == (None, "cuda", "profiles", Path("results.json"))
    args = parser.parse_args(["data", "--n", "2", "--long-side", "96", "--quality", "80"])
    assert (args.command, args.n, args.long_side, args.quality) == ("data", 2, 96, 80)
    assert (args.passes, args.width, args.height, args.size, args.batch_size) == (3, 3840, 2160, 1024, 2)
    args = parser.parse_args(["metrics", "--num-images", "10", "--skip-pysod", "--json", "m.json"])
    assert (args.command, args.num_images, args.skip_pysod, args.json) == ("metrics", 10, True, Path("m.json"))
    assert (args.threads, args.device, args.chunk, args.height, args.width, args.seed) == (1, "cpu", 10, 1152, 2048, 0)
    assert parser.parse_args(["metrics", "--n", "3"]).num_images == 3
    args = parser.parse_args(["video", "-b", "2", "--skip-video", "--checkpoint", "c.pth"])
    assert (args.command, args.batch_size, args.skip_video, args.checkpoint) == ("video", 2, True, "c.pth")
    assert (args.size, args.frames, args.resolutions) == (1024, 30, [(1280, 720), (3840, 2160)])
    assert parser.parse_args(["video", "--resolutions", "640x360"]).resolutions == [(640, 360)]
    with pytest.raises(SystemExit):
        parser.parse_args(["video", "--resolutions", "720p"])
    args = parser.parse_args(["cost", "--graft-points", "r5-s2", "r4-s1:window", "--out", "cost.json"])
    assert (args.command, args.graft_points, args.out) == ("cost", ["r5-s2", "r4-s1:window"], "cost.json")
    assert (args.window_size, args.size, args.train_size, args.train_batch, args.repetitions) == (8, 1024, 512, 2, 3)
    args = parser.parse_args(["precision", "--threads", "2", "--checkpoint", "c.pth", "--precisions", "fp32", "bf16"])
    assert (args.command, args.threads, args.checkpoint, args.precisions) == ("precision", 2, "c.pth", ["fp32", "bf16"])
    assert (args.size, args.iterations, args.score_images, args.score_seed) == (1024, 5, 40, 100000)
    assert parser.parse_args(["video", "--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["bogus"])


def test_data_and_metrics_commands(tmp_path, capsys):
    code = main(["data", "--n", "2", "--width", "128", "--height", "96", "--size", "64", "--long-side", "96",
                 "--passes", "1", "--batch-size", "1"])
    out = capsys.readouterr().out
    assert "wrote 2 synthetic 128x96 pairs" in out and "one-off cache cost" in out
    assert f"target: {LOADER_SPEEDUP.name}:" in out and code == (1 if "MISSED" in out else 0)
    report_path = tmp_path / "metrics.json"
    assert main(["metrics", "--n", "2", "--height", "48", "--width", "64", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert [row["implementation"] for row in report["timings"]] == [
        "pysodmetrics", "pgnet (same metrics)", "pgnet (all, + BIoU, mBA)"]
    assert max(report["abs_difference_vs_pysodmetrics"].values()) < 1e-6
    assert {"pgnet_results", "pgnet_full_results", "torch_version", "platform", "processor"} <= report.keys()


def test_cpu_bfloat16_path_is_measured_where_the_cpu_computes_bfloat16(small_model, monkeypatch):
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    assert "fast_bf16" not in [v.name for v in default_inference_variants(CPU)]
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    variants = default_inference_variants(CPU)
    bf16 = next(v for v in variants if v.name == "fast_bf16")
    assert variants[-1].name == "fast_fp32" and bf16.weights_dtype == torch.bfloat16 and bf16.autocast_dtype is None
    _, figure = measure_inference(small_model, CPU, [variants[0], bf16], size=64, iterations=1, warmup=1)
    check_figure(figure)
    assert figure["dtype"] == "bfloat16" and figure["variant"]["weights_dtype"] == "bfloat16"
    assert 0 < figure["max_abs_diff_probability"] < 0.1
    env = environment(CPU)
    assert env["cpu_native_bf16"] and set(env["cpu_flags"]) >= {"avx512_bf16", "amx_bf16"}


def test_precision_speed_and_scores(small_model, capsys):
    speed = measure_predictor_speed(small_model, ("fp32", "bf16"), size=64, iterations=1, warmup=0)
    assert [f["name"] for f in speed] == ["official_fp32", "predictor_fp32", "predictor_bf16"]
    assert [f["dtype"] for f in speed] == ["fp32", "fp32", "bf16"] and speed[0]["speedup"] == 1.0
    assert speed[1]["max_abs_diff_probability"] < 1e-4 < speed[2]["max_abs_diff_probability"] < 0.1
    samples = [make_sample(index, 64) for index in range(2)]
    scores = measure_precision_scores(small_model, samples, ("bf16",), size=64)
    assert list(scores) == ["fp32", "bf16"] and scores["fp32"]["max_abs_diff_probability"] == 0.0
    bf16 = scores["bf16"]
    assert bf16["resolved"] == "bf16" and 0 < bf16["mean_abs_diff_probability"] < 5e-3
    assert bf16["delta_MAE"] == pytest.approx(bf16["MAE"] - scores["fp32"]["MAE"])
    assert bf16["auto_rule"] == (all(abs(bf16[f"delta_{k}"]) <= AUTO_RULE_SCORE for k in SCORES)
                                 and bf16["mean_abs_diff_probability"] <= AUTO_RULE_MEAN_PROBABILITY)
    table = format_precision_figures({"speed": speed, "scores": scores})
    assert "predictor_bf16" in table and ("holds" in table or "fails" in table)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the resident memory")
def test_resident_peak_sees_what_a_block_allocates():
    with ResidentPeak() as peak, mmap.mmap(-1, 64 * 2**20) as block:  # fresh pages from the kernel
        for offset in range(0, len(block), 4096):  # touched: now resident
            block[offset] = 1
    assert 48 < peak.growth_mib < 256 and peak.peak_mib >= peak.start_mib + peak.growth_mib - 1e-6
    assert resident_mib() > 0 and resident_mib(os.getpid()) > 0
