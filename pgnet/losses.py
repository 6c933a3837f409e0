"""PGNet losses: BCE + IoU on the predictions, and the attention-guided loss (AGL) on the CMGM.

Total (official weights): bce_iou(pred) + 0.125·bce_iou(side_cnn) + 0.125·bce_iou(side_swin) + AGL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.config import LossConfig
from pgnet.models.pgnet import PGNetOutput


def bce_iou_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits plus soft IoU loss 1 − (I+1)/(U−I+1), per image then averaged.

    ``mask`` (B×1×H×W in [0, 1]) is resized bilinearly to the logits and kept soft.
    """
    if mask.shape[-2:] != logits.shape[-2:]:
        mask = F.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    prob = torch.sigmoid(logits)
    intersection = (prob * mask).sum(dim=(2, 3))
    union = (prob + mask).sum(dim=(2, 3))
    iou = 1 - (intersection + 1) / (union - intersection + 1)
    return bce + iou.mean()


def pairwise_affinity(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B×1×H×W maps → B×1×N×N outer products of their values on the graft grid (N = h·w)."""
    flat = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False).flatten(1).unsqueeze(-1)  # B×N×1
    return (flat @ flat.transpose(1, 2)).unsqueeze(1)


def attention_guided_loss(
    attention_logits: torch.Tensor,
    grid: tuple[int, int],
    mask: torch.Tensor,
    side_cnn: torch.Tensor,
    side_swin: torch.Tensor,
) -> torch.Tensor:
    """AGL: BCE between the CMGM attention logits and the ground truth's pairwise affinity.

    Target G = flat(mask)·flat(mask)ᵀ. Pixel pairs the side outputs get wrong weigh more:
    w = 1 + ½(|G − P_cnn| + |G − P_swin|), with P the (detached) sides' affinities.
    """
    target = pairwise_affinity(mask, grid)
    with torch.no_grad():
        cnn = pairwise_affinity(torch.sigmoid(side_cnn.detach().float()), grid)
        swin = pairwise_affinity(torch.sigmoid(side_swin.detach().float()), grid)
        weight = 0.5 * ((target - cnn).abs() + (target - swin).abs()) + 1
    return F.binary_cross_entropy_with_logits(attention_logits.float(), target, weight=weight)


class PGNetLoss(nn.Module):
    """Weighted sum of the PGNet loss terms; returns the total and each term (detached) by name."""

    def __init__(self, weights: LossConfig | None = None):
        super().__init__()
        self.weights = weights or LossConfig()

    def forward(self, output: PGNetOutput, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = mask.float()
        terms = {
            "pred": bce_iou_loss(output.pred.float(), mask),
            "side_cnn": bce_iou_loss(output.side_cnn.float(), mask),
            "side_swin": bce_iou_loss(output.side_swin.float(), mask),
        }
        if self.weights.attention and not output.attention:
            raise ValueError("the attention-guided loss needs the attention logits: call the model with need_attention")
        for index, (logits, grid) in enumerate(zip(output.attention, output.attention_grids)):
            name = "attention" if index == 0 else f"attention_{index}"
            terms[name] = attention_guided_loss(logits, grid, mask, output.side_cnn, output.side_swin)
        weights = {
            "pred": self.weights.pred,
            "side_cnn": self.weights.side_cnn,
            "side_swin": self.weights.side_swin,
        }
        total = sum(weights.get(name, self.weights.attention) * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
