"""Pictures of predictions and attention, and the TensorBoard events a run writes (without a model)."""

import cv2
import numpy as np
import pytest
import torch

from pgnet.metrics import SODMetrics
from pgnet.models.pgnet import PGNetOutput
from pgnet.train.tensorboard import DESCRIPTIONS, TrainingBoard, loss_tag
from pgnet.train.visualize import (
    MAX_WIDTH,
    agl_picture,
    attention_query_picture,
    mask_on_grid,
    object_first_order,
    prediction_picture,
    query_points,
)


def disc_mask(size: int = 64) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((ys - 26) ** 2 + (xs - 36) ** 2) < 14**2).float()[None]  # 1×S×S


def test_query_points_sit_inside_on_the_edge_and_in_the_background_away_from_the_border():
    grid = np.zeros((20, 20), np.float32)
    grid[3:10, 5:15] = 1
    points = query_points(grid)
    assert list(points) == ["object", "boundary", "background"]
    y, x = points["object"]
    assert grid[y, x] == 1 and 3 < y < 9 and 5 < x < 14
    y, x = points["boundary"]
    assert grid[y, x] == 1 and (y in (3, 9) or x in (5, 14))
    y, x = points["background"]
    assert grid[y, x] == 0 and min(y, x, 19 - y, 19 - x) >= 3  # not a corner: away from the border
    assert list(query_points(np.zeros((8, 8)))) == ["background"]
    assert list(query_points(np.ones((8, 8)))) == ["object"]


def test_object_first_order_makes_the_agl_target_a_block_matrix():
    flat = mask_on_grid(disc_mask(), (8, 8)).flatten()
    order, objects = object_first_order(flat)
    binary = (flat > 0.5).float()
    target = torch.outer(binary, binary)[order][:, order]
    assert 0 < objects < 64
    assert target[:objects, :objects].min() == 1 and target.sum() == objects**2


def test_attention_picture_fits_the_width_and_one_scale_shows_a_flat_head_dark():
    mask = disc_mask()
    grid, tokens = (8, 8), 64
    attention = torch.full((16, tokens, tokens), 1 / tokens)
    attention[0, :, :] = 0
    attention[0, :, 10] = 1.0  # head 1 puts everything on one key token
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    picture = attention_query_picture(image, mask, attention, grid, (3, 4), "test")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[1] <= MAX_WIDTH
    # One scale for the picture: the sharp head reaches its top (inferno's pale yellow), flat heads stay dark.
    heat = picture.astype(int).sum(2)
    y, x = np.unravel_index(np.argmax(np.where(picture[..., 2] < 150, heat, 0)), heat.shape)
    assert picture[y, x, 0] > 200 and picture[y, x, 1] > 150


def test_agl_and_prediction_pictures_fit_the_width():
    mask = disc_mask()
    flat = mask_on_grid(mask, (8, 8)).flatten()
    logits = torch.logit(torch.outer(flat, flat).clamp(0.01, 0.99))
    image = np.zeros((64, 64, 3), np.uint8)
    agl = agl_picture(image, mask, logits, (8, 8), query_points(flat.view(8, 8).numpy()), "agl")
    assert agl.shape[1] <= MAX_WIDTH and agl.shape[0] > agl.shape[1]
    pred = prediction_picture(image, mask, torch.zeros(1, 64, 64), torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    assert pred.shape[1] <= MAX_WIDTH


def test_loss_terms_are_named_by_grafting_point():
    points = ("r5-s2", "r4-s1")
    assert loss_tag("attention", points) == "loss/attention/r5-s2"
    assert loss_tag("attention_1", points) == "loss/attention/r4-s1"
    assert loss_tag("attention_2", points) == "loss/attention_2"  # unknown point: left as it is
    assert loss_tag("pred", points) == "loss/pred"


def test_pixel_counts_add_up_to_the_pixels_of_the_set():
    metrics = SODMetrics(["Fm"])
    generator = torch.Generator().manual_seed(0)
    masks = [(torch.rand(20, 30, generator=generator) > 0.6).float(), torch.zeros(10, 10)]
    preds = [torch.rand(20, 30, generator=generator), torch.rand(10, 10, generator=generator)]
    for pred, mask in zip(preds, masks):
        metrics.update(pred, mask)
    counts = metrics.pixel_counts()
    foreground = int(sum(m.sum() for m in masks))
    np.testing.assert_array_equal(counts["true_pos"] + counts["false_neg"], foreground)
    np.testing.assert_array_equal(sum(counts.values()), 20 * 30 + 10 * 10)
    # Threshold 128 (index 255 - 128): pixels whose 8-bit value is at least 128.
    positive = [((p * 255).round() >= 128) for p in preds]
    assert counts["true_pos"][127] == sum(int((p & (m > 0)).sum()) for p, m in zip(positive, masks))
    assert counts["false_pos"][127] == sum(int((p & (m == 0)).sum()) for p, m in zip(positive, masks))


@pytest.fixture
def board_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TrainingBoard(tmp_path, resume_step=None, graft_points=("r5-s2", "r4-s1"), mean=(0, 0, 0),
                          std=(1, 1, 1), fresh=True)
    board.losses(5, {"total": 1.0, "attention": 0.5, "attention_1": 0.25}, {"swin": 1e-3}, 10.0)
    board.skipped_samples(5, 0)
    board.skipped_samples(6, 2)
    mask = disc_mask()[None]  # 1×1×S×S
    flat = mask_on_grid(mask[0], (8, 8)).flatten()
    # Two global grafting points, and a third map that does not match its grid (skipped, no crash).
    output = PGNetOutput(pred=torch.zeros(1, 1, 64, 64), side_cnn=torch.zeros(1, 1, 8, 8),
                         side_swin=torch.zeros(1, 1, 8, 8),
                         attention=[torch.outer(flat, flat).view(1, 1, 64, 64), torch.zeros(1, 1, 16, 16),
                                    torch.zeros(1, 1, 9, 9)],
                         attention_grids=[(8, 8), (4, 4), (4, 4)])
    attention = [torch.full((1, 8, 64, 64), 1 / 64), torch.full((1, 8, 16, 16), 1 / 16),
                 torch.full((1, 8, 9, 9), 1 / 9)]
    board.training_pictures(5, {"image": torch.rand(1, 3, 64, 64) * 255, "mask": mask}, output, attention)
    board.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_board_writes_named_scalars_described_pictures_text_and_layout(board_events):
    tags = board_events.Tags()
    assert {"loss/total", "loss/attention/r5-s2", "loss/attention/r4-s1", "lr/swin"} <= set(tags["scalars"])
    assert [e.step for e in board_events.Scalars("data/skipped_samples")] == [6]  # none at step 5
    queries = ("object", "boundary", "background")
    pictures = {"prediction/train", "agl/r5-s2/train", "agl/r4-s1/train"}
    pictures |= {f"attention/{point}/train/{query}" for point in ("r5-s2", "r4-s1") for query in queries}
    assert set(tags["tensors"]) == pictures | {"about/pictures/text_summary", "custom_scalars__config__"}
    assert board_events.SummaryMetadata("agl/r5-s2/train").summary_description == DESCRIPTIONS["agl"]
    assert board_events.SummaryMetadata("attention/r5-s2/train/object").plugin_data.plugin_name == "images"
    width, height, png = board_events.Tensors("prediction/train")[0].tensor_proto.string_val
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (int(height), int(width)) and int(width) <= MAX_WIDTH


def test_window_of_query_crops_the_window_holding_the_query():
    """A shifted 4×4 window layout on a 10×12 grid: index, position inside and the crop's overhang."""
    from pgnet.train.visualize import window_of_query

    image = np.arange(40 * 48 * 3, dtype=np.float32).reshape(40, 48, 3)  # 4 pixels per token
    mask = torch.zeros(1, 40, 48)
    mask[0, 8:16, 12:20] = 1.0  # tokens (2..3, 3..4)
    crop, crop_mask, index, inside, corner = window_of_query(image, mask, (10, 12), (4, 2), (2, 3))
    # offset 2: the padded grid is 16 wide → 4 window columns; token (2, 3) → padded (4, 5) → window (1, 1)
    assert index == 1 * 4 + 1 and inside == (0, 1) and corner == (2, 2)
    assert crop.shape == (16, 16, 3) and tuple(crop_mask.shape) == (16, 16)
    assert np.array_equal(crop, image[8:24, 8:24])
    assert torch.equal(crop_mask, mask[0, 8:24, 8:24])
    corner_crop, _, first, _, top_left = window_of_query(image, mask, (10, 12), (4, 2), (0, 0))
    assert first == 0 and top_left == (-2, -2)
    assert np.all(corner_crop[:8, :] == 0) and np.array_equal(corner_crop[8:, 8:], image[:8, :8])
