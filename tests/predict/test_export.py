"""ONNX export: dynamic batch, height and width; onnxruntime matches PyTorch; no attention branch."""

import numpy as np
import pytest
import torch

import pgnet
from pgnet.checkpoint import model_checkpoint, save_checkpoint
from pgnet.cli.export import main as export_main
from pgnet.data.transforms import OFFICIAL_MEAN, OFFICIAL_STD

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)
FOUR_LEVELS = dict(graft_points=["r5-s2", "r4-s1:window", "r3-s1:window", "r2-s1:window"], window_size=4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path of its ONNX export made by the command line). One export serves every test here (an
    export takes most of this file's time): a model grafted at every level with windowed points, whose
    graph holds the official r5-s2 point's as well."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = pgnet.create_model(**SMALL, **FOUR_LEVELS).eval()
    for graft in (model.decoder.cnn3_graft, model.decoder.cnn2_graft):  # they start at zero: make them count
        torch.nn.init.normal_(graft.expand.weight, std=0.05)
    checkpoint = save_checkpoint(model_checkpoint(model), folder / "tiny.pth")
    path = folder / "tiny.onnx"
    assert export_main([str(checkpoint), str(path)]) == 0
    return model, path


def reference(model, image):
    """The probabilities computed directly with PyTorch (official normalisation written out here)."""
    mean = torch.tensor(OFFICIAL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OFFICIAL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.sigmoid(model((image - mean) / std).pred).numpy()


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 160, 224),
        (2, 3, 131, 197),  # batch 2, odd sides: no size is a multiple of 32
        (1, 3, 256, 224),  # the r5 grid (8×7) meets the Swin s2 grid (8×8) in height
    ],
)
def test_onnxruntime_matches_pytorch_at_other_sizes(exported, shape):
    model, path = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 255
    (actual,) = session.run(["mask"], {"image": image.numpy()})
    expected = reference(model, image)
    assert actual.shape == (shape[0], 1, *shape[2:])
    assert np.abs(actual - expected).max() <= 1e-3


def test_graph_interface_is_dynamic_and_has_no_attention_branch(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [v.name for v in graph.input] == ["image"] and [v.name for v in graph.output] == ["mask"]
    assert dims(graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(graph.output[0]) == ["batch", 1, "height", "width"]
    names = [initializer.name for initializer in graph.initializer]
    assert any("head_pred" in name for name in names) and any("cmgm" in name for name in names)
    assert not [n for n in names if any(k in n for k in ("attention_conv", "attention_norm", "attention_heads"))]


def test_models_with_size_dependent_pooling_need_a_static_size(tmp_path):
    from pgnet.predict.export import export_onnx

    for points in (["r5-s2", "r4-s1"], ["r5-s2", "r2-s1:global"]):
        with torch.device("meta"):  # refused before any weight is read
            model = pgnet.create_model(**SMALL, graft_points=points)
        with pytest.raises(ValueError, match="static_size"):
            export_onnx(model, tmp_path / "pooled.onnx")


def test_windowed_grafting_at_every_level_exports_with_dynamic_sizes(exported):
    """Windows pad inside the graph: one export serves sizes that are not multiples of the window."""
    from pgnet.predict.export import compare_onnx

    model, path = exported
    assert max(compare_onnx(model, path, shapes=((1, 3, 100, 76), (2, 3, 64, 120)))) <= 1e-4
