"""Loss terms: BCE+IoU, the attention-guided loss, and their weighted sum."""

import torch
import torch.nn.functional as F

from pgnet.config import LossConfig
from pgnet.models import PGNetOutput
from pgnet.train.losses import PGNetLoss, attention_guided_loss, bce_iou_loss, pairwise_affinity


def test_bce_iou_by_hand():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    prob = torch.sigmoid(logits)
    inter = (prob * mask).sum()
    union = (prob + mask).sum()
    expected = F.binary_cross_entropy_with_logits(logits, mask) + 1 - (inter + 1) / (union - inter + 1)
    torch.testing.assert_close(bce_iou_loss(logits, mask), expected)


def test_bce_iou_resizes_the_mask_softly():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 3:] = 1  # an edge between pixels that 2× downsampling averages
    logits = torch.zeros(1, 1, 4, 4)
    soft = F.interpolate(mask, size=(4, 4), mode="bilinear", align_corners=False)
    assert ((soft > 0) & (soft < 1)).any()
    torch.testing.assert_close(bce_iou_loss(logits, mask), bce_iou_loss(logits, soft))


def test_pairwise_affinity_is_the_outer_product():
    maps = torch.rand(2, 1, 4, 6)
    affinity = pairwise_affinity(maps, (4, 6))
    assert affinity.shape == (2, 1, 24, 24)
    flat = maps.flatten(1)
    torch.testing.assert_close(affinity[1, 0], torch.outer(flat[1], flat[1]))


def test_attention_guided_loss_weights_and_detached_sides():
    grid = (4, 4)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    attention = torch.randn(2, 1, 16, 16, requires_grad=True)
    side_cnn = torch.randn(2, 1, 4, 4, requires_grad=True)
    side_swin = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = attention_guided_loss(attention, grid, mask, side_cnn, side_swin)
    target = pairwise_affinity(mask, grid)
    weight = 1 + 0.5 * (
        (target - pairwise_affinity(torch.sigmoid(side_cnn), grid)).abs()
        + (target - pairwise_affinity(torch.sigmoid(side_swin), grid)).abs()
    )
    expected = F.binary_cross_entropy_with_logits(attention, target, weight=weight.detach())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert attention.grad is not None and side_cnn.grad is None and side_swin.grad is None


def test_total_uses_the_official_weights_and_every_grafting_point():
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    output = PGNetOutput(
        pred=torch.randn(2, 1, 32, 32),
        side_cnn=torch.randn(2, 1, 4, 4),
        side_swin=torch.randn(2, 1, 4, 4),
        attention=[torch.randn(2, 1, 16, 16), torch.randn(2, 1, 9, 9)],
        attention_grids=[(4, 4), (3, 3)],
        attention_points=["r5-s2", "r4-s1"],
    )
    total, terms = PGNetLoss(LossConfig())(output, mask)
    assert set(terms) == {"pred", "side_cnn", "side_swin", "attention/r5-s2", "attention/r4-s1"}
    sides = 0.125 * (terms["side_cnn"] + terms["side_swin"])
    expected = terms["pred"] + sides + terms["attention/r5-s2"] + terms["attention/r4-s1"]
    torch.testing.assert_close(total, expected)
