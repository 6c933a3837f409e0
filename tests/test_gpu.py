"""CUDA paths: bf16 inference and mixed-precision training (skipped without a GPU; CI has none)."""

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
