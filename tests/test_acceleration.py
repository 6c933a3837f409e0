"""Inference fast paths on the CPU: the prepared copy, torch.compile, and the CUDA-graph runner's guards
and eager fallback (its graphs themselves are tested in test_gpu.py)."""

import numpy as np
import pytest
import torch

from pgnet.acceleration import CUDAGraphRunner, inference_network, prepare_for_inference
from pgnet.benchmark import SMALL_MODEL, build_benchmark_model
from pgnet.inference import Predictor
from pgnet.models.pgnet import PGNet

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    # BatchNorm statistics calibrated: logits at a trained network's scale, so 1e-4 is a real bound.
    return build_benchmark_model({**SMALL_MODEL, "graft_points": ("r5-s2", "r4-s1"), "token_budget": 64})


def test_prepared_copy_folds_fuses_and_agrees(model):
    image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    prepared = prepare_for_inference(model)
    assert prepared is not model and not prepared.training
    left = [name for name, m in prepared.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == ["decoder.graft.cmgm.attention_norm", "decoder.cnn4_block.cmgm.attention_norm"]  # unused here
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.resnet.modules())  # the original is untouched
    assert all(m.fused_attn for m in prepared.swin.modules() if hasattr(m, "fused_attn"))
    assert prepared.head_pred.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(image, need_attention=False)
        output = prepared(image.contiguous(memory_format=torch.channels_last), need_attention=False)
    assert output.pred.is_contiguous(memory_format=torch.channels_last) or output.pred.shape[1] == 1
    torch.testing.assert_close(output.pred.sigmoid(), reference.pred.sigmoid(), atol=1e-4, rtol=0)
    torch.testing.assert_close(output.side_cnn, reference.side_cnn, atol=1e-4, rtol=1e-4)


def test_graph_runner_guards_and_runs_cpu_inputs_eagerly(model):
    with pytest.raises(ValueError, match="eval mode"):
        CUDAGraphRunner(PGNet(model.config).train())
    runner = CUDAGraphRunner(model.eval())
    with pytest.raises(ValueError, match="need_attention"):
        runner(torch.randn(1, 3, 64, 64), need_attention=True)
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphRunner(model, max_graphs=0)
    image = torch.randn(1, 3, 64, 80)
    output = runner(image, output_size=(16, 20))
    with torch.inference_mode():
        expected = model(image, output_size=(16, 20), need_attention=False)
    assert runner.graphs == {} and output.pred.shape == (1, 1, 16, 20)
    torch.testing.assert_close(output.pred, expected.pred, atol=0, rtol=0)


def test_inference_network_choices(model):
    assert inference_network(model, CPU, optimize=False) is model
    assert isinstance(inference_network(model, CPU), PGNet)  # no graphs on the CPU
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        inference_network(model, CPU, cuda_graphs=True)
    with pytest.raises(ValueError, match="not both"):
        inference_network(model, torch.device("cuda"), compile=True, cuda_graphs=True)


def test_predictor_fast_and_compiled_paths_agree_with_the_plain_model(model):
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, size=96, device="cpu", optimize=False)
    assert plain.network is model
    fast = Predictor(model, size=96, device="cpu")
    compiled = Predictor(model, size=96, device="cpu", compile=True)
    assert "optimize=True" in repr(fast) and "compile=True" in repr(compiled)
    expected = plain(image)
    for predictor in (fast, compiled):
        mask = predictor(image)
        assert mask.shape == (90, 120) and mask.dtype == np.float32
        assert np.abs(mask - expected).max() <= 1e-4
