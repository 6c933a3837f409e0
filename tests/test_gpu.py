"""CUDA paths: bf16 inference and mixed-precision training (skipped without a GPU; CI has none)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import pgnet
from pgnet.config import load_config
from pgnet.engine.trainer import Trainer
from pgnet.inference import Predictor

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
