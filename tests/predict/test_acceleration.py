"""Inference fast paths on the CPU: the prepared copy (float32 and bfloat16), torch.compile, and the
CUDA-graph runner's guards and eager fallback (its graphs themselves are tested in test_gpu.py)."""

import numpy as np
import pytest
import torch

from pgnet.benchmark import SMALL_MODEL, build_benchmark_model
from pgnet.device import CPU_BF16_VARIABLE
from pgnet.models.pgnet import PGNet
from pgnet.predict.acceleration import (
    CUDAGraphRunner,
    Float32Head,
    LowPrecisionNetwork,
    inference_network,
    prepare_for_inference,
)
from pgnet.predict.predictor import Predictor

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


def test_bfloat16_copy_runs_bfloat16_with_its_head_and_logits_in_float32(model):
    image = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    prepared = prepare_for_inference(model, dtype=torch.bfloat16)
    assert isinstance(prepared, LowPrecisionNetwork) and isinstance(prepared.model.head_pred, Float32Head)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.model.resnet.modules())  # folded first
    assert prepared.model.resnet.conv1.weight.dtype == torch.bfloat16
    assert prepared.model.swin.patch_embed.proj.weight.dtype == torch.bfloat16
    assert prepared.model.head_pred.conv.weight.dtype == torch.float32
    assert model.head_pred.weight.dtype == torch.float32  # the original is untouched
    with torch.inference_mode():
        reference = model(image, output_size=(24, 24), need_attention=False).pred.sigmoid()
        output = prepared(image.contiguous(memory_format=torch.channels_last), output_size=(24, 24))
    assert output.pred.dtype == torch.float32 and output.side_cnn.dtype == torch.bfloat16
    difference = (output.pred.sigmoid() - reference).abs()
    assert difference.max() < 0.05 and difference.mean() < 5e-3  # bfloat16's 8 bits of mantissa
    with pytest.raises(ValueError, match="dtype needs optimize"):
        inference_network(model, CPU, optimize=False, dtype=torch.bfloat16)


def test_auto_precision_follows_the_cpus_native_bf16(model, monkeypatch):
    """Forced off, ``auto`` is the float32 path (masks as the plain model's to 1e-4); forced on, the
    bfloat16 copy, run without autocast, close to float32."""
    image = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    expected = Predictor(model, size=64, device="cpu", optimize=False, precision="fp32")(image)
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    without = Predictor(model, size=64, device="cpu")
    assert without.precision == "fp32" and not isinstance(without.network, LowPrecisionNetwork)
    assert np.abs(without(image) - expected).max() <= 1e-4
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    native = Predictor(model, size=64, device="cpu")
    assert native.precision == "bf16" and isinstance(native.network, LowPrecisionNetwork)
    assert not torch.is_autocast_enabled("cpu") and native.runtime.autocast().__class__.__name__ == "nullcontext"
    mask = native(image)
    assert mask.dtype == np.float32 and mask.shape == (70, 90)
    assert 0 < np.abs(mask - expected).mean() < 5e-3


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: a "replay" re-runs the captured call, which is what
    a real replay does to the captured tensors."""

    def __init__(self):
        self.replays = 0
        self.call = None

    def replay(self):
        self.replays += 1
        self.call()


def test_graph_runner_bookkeeping_with_a_fake_cuda(model, monkeypatch):
    """The capture/replay logic, run on the CPU with torch.cuda's graph API faked: each shape is captured
    once, inputs go through the static buffer, outputs are copies, the least recently used graph goes."""
    import contextlib

    from pgnet.predict import acceleration

    captured_calls = []

    @contextlib.contextmanager
    def fake_graph(graph, **kwargs):
        original = model.forward

        def recording(image, output_size=None, need_attention=False):
            result = original(image, output_size, need_attention)

            def rerun():  # recompute into the captured output, reading the static input again
                result.pred = original(image, output_size).pred

            graph.call = rerun
            captured_calls.append(tuple(image.shape))
            return result

        monkeypatch.setattr(model, "forward", recording)
        yield
        monkeypatch.setattr(model, "forward", original)

    class FakeStream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    runner = acceleration.CUDAGraphRunner(model.eval(), max_graphs=2, warmup=1)

    def call(image, output_size=None):
        key = (tuple(image.shape), image.dtype, image.stride(), str(image.device), output_size)
        return runner._replay(key, image, output_size)

    first, second = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    out_first = call(first)
    out_second = call(second)  # a replay of the first graph, with the second input copied in
    assert captured_calls == [(1, 3, 64, 64)] and len(runner.graphs) == 1
    (graph,) = runner.graphs.values()
    assert graph.graph.replays == 2 and torch.equal(graph.image, second)
    with torch.inference_mode():
        expected_first, expected_second = model(first).pred, model(second).pred
    torch.testing.assert_close(out_first.pred, expected_first)
    torch.testing.assert_close(out_second.pred, expected_second)  # the first output was a copy: unchanged
    assert out_first.pred.data_ptr() != graph.output.pred.data_ptr()
    call(torch.randn(2, 3, 64, 64))
    call(torch.randn(1, 3, 64, 64), output_size=(16, 16))
    assert len(runner.graphs) == 2 and len(captured_calls) == 3
    assert all(key[0] != (1, 3, 64, 64) or key[-1] is not None for key in runner.graphs)  # the LRU one went
    # A capture that fails (an operation graphs don't allow) warns once, then that shape runs eagerly.
    def failing_graph(graph, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", failing_graph)
    odd = torch.randn(1, 3, 48, 80)
    with pytest.warns(RuntimeWarning, match="capture failed for input \\(1, 3, 48, 80\\)"):
        output = call(odd)
    with torch.inference_mode():
        torch.testing.assert_close(output.pred, model(odd).pred)
    assert len(runner.uncapturable) == 1 and len(runner.graphs) == 2
