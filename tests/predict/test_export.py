"""ONNX export: dynamic batch, height and width; onnxruntime matches PyTorch; no attention branch;
JSON metadata; the onnxruntime snippet of docs/inference.md matches ``Predictor``."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pgnet
from pgnet.checkpoint import model_checkpoint, save_checkpoint
from pgnet.cli.export import main as export_main
from pgnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)
FOUR_LEVELS = dict(graft_points=["r5-s2", "r4-s1:window", "r3-s1:window", "r2-s1:window"], window_size=4)
# Not the official statistics nor the official test size: the export must carry the checkpoint's.
PREPROCESSING = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, eval_size=64)
INFERENCE_DOC = Path(__file__).resolve().parents[2] / "docs" / "inference.md"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path of its ONNX export made by the command line, checkpoint). One export serves every test
    here (an export takes most of this file's time): a model grafted at every level with windowed points,
    whose graph holds the official r5-s2 point's as well, trained (as it were) at 64 with ImageNet
    statistics."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = pgnet.create_model(**SMALL, **FOUR_LEVELS).eval()
    for graft in (model.decoder.cnn3_graft, model.decoder.cnn2_graft):  # they start at zero: make them count
        torch.nn.init.normal_(graft.expand.weight, std=0.05)
    checkpoint = save_checkpoint(model_checkpoint(model, PREPROCESSING), folder / "tiny.pth")
    path = folder / "tiny.onnx"
    assert export_main([str(checkpoint), str(path)]) == 0
    return model, path, checkpoint


def reference(model, image):
    """The probabilities computed directly with PyTorch (the checkpoint's normalisation written out here)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
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
    model, path, _ = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 255
    (actual,) = session.run(["mask"], {"image": image.numpy()})
    expected = reference(model, image)
    assert actual.shape == (shape[0], 1, *shape[2:])
    assert np.abs(actual - expected).max() <= 1e-3


def test_graph_interface_is_dynamic_and_has_no_attention_branch(exported):
    _, path, _ = exported
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

    model, path, _ = exported
    shapes = ((1, 3, 100, 76), (2, 3, 64, 120))
    assert max(compare_onnx(model, path, shapes=shapes, preprocessing=PREPROCESSING)) <= 1e-4


def test_metadata_is_json_with_the_checkpoints_preprocessing_and_model_settings(exported):
    model, path, _ = exported
    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["pgnet.preprocessing"]) == PREPROCESSING.to_dict()
    assert json.loads(metadata["pgnet.model_config"]) == model.config.to_dict()


def test_onnxruntime_snippet_of_the_docs_matches_the_predictor(exported, tmp_path, monkeypatch):
    """The documented snippet, run as written (its files named pgnet.onnx and photo.jpg), reads the test
    size from the metadata and gives Predictor's mask up to its resizing of probabilities for logits."""
    _, path, checkpoint = exported
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", INFERENCE_DOC.read_text(), re.S)
                  if "onnxruntime" in block]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pgnet.onnx").symlink_to(path)
    rng = np.random.default_rng(0)
    photo = np.zeros((90, 120, 3), np.uint8)
    photo[...] = rng.integers(0, 80, 3)
    cv2.circle(photo, (60, 45), 25, (230, 200, 40), -1)  # a subject on a background
    cv2.imwrite("photo.jpg", photo)
    namespace: dict = {}
    exec(compile(snippet, str(INFERENCE_DOC), "exec"), namespace)
    expected = pgnet.Predictor.from_checkpoint(checkpoint, device="cpu")("photo.jpg")
    assert namespace["size"] == 64
    assert namespace["mask"].shape == expected.shape == (90, 120)
    difference = np.abs(namespace["mask"] - expected)
    # Probabilities resized instead of logits: softer edges, a few pixels apart (1024 instead of the
    # checkpoint's 64 gave a mean of 5e-3 and a largest difference of 0.99 on this picture).
    assert difference.mean() <= 1e-3 and difference.max() <= 0.3
