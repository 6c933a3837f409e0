"""CUDA paths: bf16 inference, CUDA graphs in the predictor and the evaluator, mixed-precision
training (tiny and at the official recipe's sizes), compiled training, resume, and NCCL at world size 1
with the DDP self-checks (skipped without a GPU; CI has none: ``make gpu-check`` runs them)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pgnet
from pgnet.config import load_config
from pgnet.predict.predictor import Predictor
from pgnet.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = pgnet.ModelConfig(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=112)
REPO = Path(__file__).resolve().parents[1]
# A tiny run on the GPU (CLI overrides of configs/demo.yaml): 16 pictures, batch 4, 64 px.
TINY_RUN = [
    "name=gpu", "model.swin=swin_tiny_patch4_window7_224", "model.swin_input_size=64",
    "data.train=[{name: synthetic, n: 16, size: 96, seed: 0}]", "data.val=[{name: synthetic, n: 4, size: 96, seed: 9}]",
    "data.size=64", "data.multiscale=[64]", "data.eval_size=64", "data.batch_size=4", "data.num_workers=0",
    "train.device=cuda", "train.epochs=1",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bf16_predictor_on_cuda_agrees_with_fp32_on_cpu():
    torch.manual_seed(0)
    model = pgnet.create_model(TINY)
    image = np.random.default_rng(0).integers(0, 256, (300, 220, 3), dtype=np.uint8)
    cpu = Predictor(model, size=256, device="cpu", precision="fp32")(image)
    gpu = Predictor(model, size=256, device="cuda")(image)
    assert Predictor(model, size=256, device="cuda").precision == "bf16"
    assert gpu.shape == cpu.shape == (300, 220) and gpu.dtype == np.float32
    assert np.abs(gpu - cpu).mean() < 0.02


def test_cuda_graph_runner_replays_the_eager_forward():
    from pgnet.predict.acceleration import CUDAGraphRunner, prepare_for_inference

    torch.manual_seed(0)
    model = prepare_for_inference(pgnet.create_model(TINY)).cuda()
    runner = CUDAGraphRunner(model, autocast_dtype=torch.bfloat16, max_graphs=2)
    first = torch.randn(2, 3, 128, 160, device="cuda").contiguous(memory_format=torch.channels_last)
    second = torch.randn_like(first)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected_first = model(first).pred.float()
        expected_second = model(second).pred.float()
    out_first = runner(first).pred
    out_second = runner(second).pred  # a replay: the first output must not be overwritten
    assert len(runner.graphs) == 1
    for output, expected in ((out_first, expected_first), (out_second, expected_second)):
        torch.testing.assert_close(output.float(), expected, atol=2e-2, rtol=2e-2)
    assert (out_first - out_second).abs().max() > 1e-3
    runner(first[:1])
    runner(first, output_size=(32, 40))
    assert len(runner.graphs) == 2  # the least recently used graph was dropped


def test_predictor_on_cuda_replays_graphs_and_agrees_with_eager():
    torch.manual_seed(0)
    model = pgnet.create_model(TINY)
    images = [np.random.default_rng(seed).integers(0, 256, (200, 150, 3), dtype=np.uint8) for seed in range(3)]
    graphed = Predictor(model, size=256, device="cuda", flip=True, batch_size=2)
    eager = Predictor(model, size=256, device="cuda", flip=True, batch_size=2, cuda_graphs=False)
    assert "cuda_graphs=True" in repr(graphed) and "cuda_graphs=False" in repr(eager)
    for mine, theirs in zip(graphed(images), eager(images)):
        assert np.abs(mine - theirs).max() < 1e-2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(tmp_path, amp):
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
        overrides=[
            "data.train=[{name: synthetic, n: 16, size: 96, seed: 0}]",
            "data.val=[{name: synthetic, n: 4, size: 96, seed: 9}]",
            "data.size=64", "data.multiscale=[64]", "data.eval_size=64", "data.batch_size=4",
            "data.num_workers=0", "train.epochs=2", "train.image_every=2", f"train.amp={amp}",
            "train.device=cuda", "train.ema_decay=0.9", "train.clip_grad=1.0",
        ],
    )
    summary = Trainer(config, run_dir=tmp_path / amp).fit()
    assert summary["global_step"] == 8 and summary["nonfinite_steps"] <= 1  # fp16's scaler may skip one
    assert 0 < summary["peak_gpu_memory_gib"] < 10
    assert np.isfinite(summary["last_validation"]["metrics"]["synthetic"]["Sm"])


def test_torchrun_alone_runs_nccl_and_the_self_checks(tmp_path):
    """One process under torchrun joins an NCCL group: the collectives (their tensors on the GPU)
    and the end-of-run DDP self-checks run."""
    run_dir = tmp_path / "nccl"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(REPO / "scripts" / "train.py"),
               "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY_RUN]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["global_step"] == 4
    assert summary["weights_identical_across_ranks"] is True and summary["shards_disjoint_across_ranks"] is True


def test_compiled_training_and_resume_on_cuda(tmp_path):
    """A compiled run on the GPU trains, saves, and resumes for a second epoch from its last.pth."""
    from pgnet.cli.train import main as train_main

    run_dir = tmp_path / "compiled"
    arguments = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY_RUN,
                 "train.compile=true", "train.amp=bf16"]
    assert train_main(arguments) == 0
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["global_step"] == 4 and first["nonfinite_steps"] == 0
    assert train_main(["--resume", str(run_dir), "train.epochs=2"]) == 0
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["global_step"] == 8 and resumed["epochs"] == 2
    assert np.isfinite(resumed["last_validation"]["metrics"]["synthetic"]["Sm"])


def test_evaluation_on_cuda_gives_the_cpu_scores(tmp_path):
    """pgnet-eval on the GPU (its default CUDA graphs, bf16) scores as on the CPU in float32, within
    bf16's tolerance."""
    from pgnet.checkpoint import model_checkpoint, save_checkpoint
    from pgnet.data.preprocessing import Preprocessing
    from pgnet.evaluation.evaluator import EvalDataset, ModelMethod, evaluate
    from pgnet.writing import write_image

    torch.manual_seed(0)
    checkpoint = save_checkpoint(model_checkpoint(pgnet.create_model(TINY), Preprocessing(eval_size=128)),
                                 tmp_path / "tiny.pth")
    images, masks = tmp_path / "image", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    for index in range(4):
        picture = np.random.default_rng(index).integers(0, 256, (150, 190, 3), dtype=np.uint8)
        write_image(images / f"p{index}.png", picture)
        write_image(masks / f"p{index}.png", (picture[:, :, 0] > 127).astype(np.uint8) * 255)
    scores = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "auto")):
        method = ModelMethod(checkpoint, size=128, precision=precision, num_workers=0, batch_size=2)
        report = evaluate([EvalDataset("set", masks, images)], tmp_path / device, model_method=method,
                          metrics=["MAE", "Sm"], device=device, progress=False, echo=None)
        assert report.meta["precision"] == ("fp32" if device == "cpu" else "bf16")
        (result,) = report.results
        scores[device] = result.metrics
    for key in ("MAE", "Sm"):
        assert abs(scores["cuda"][key] - scores["cpu"][key]) < 5e-3, (key, scores)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_official_recipe_trains_a_few_steps_on_cuda(tmp_path, amp):
    """The official model at the official recipe's sizes (batch 8 per GPU, multi-scale 960–1088) for a
    few steps."""
    config = load_config(
        REPO / "configs" / "pgnet_dh.yaml",
        overrides=[
            "data.train=[{name: synthetic, n: 24, size: 1200, seed: 0}]", "data.val=[]", "data.num_workers=2",
            "train.epochs=1", "train.device=cuda", f"train.amp={amp}", "train.log_every=1",
            "model.swin_pretrained=null", "model.resnet_pretrained=null", "data.batch_size=8",
        ],
    )
    summary = Trainer(config, run_dir=tmp_path / amp).fit()
    assert summary["global_step"] == 3 and summary["nonfinite_steps"] <= 1  # fp16's scaler may skip one
    assert summary["peak_gpu_memory_gib"] < 40
