"""PGNet losses: BCE + IoU on the predictions, and the attention-guided loss (AGL) on the CMGM.

Total (official weights): bce_iou(pred) + 0.125·bce_iou(side_cnn) + 0.125·bce_iou(side_swin) + AGL,
with one AGL term per grafting point, named ``attention/<point>`` (e.g. ``attention/r5-s2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.config import LossConfig
from pgnet.models.pgnet import PGNetOutput
from pgnet.models.window_cmgm import WindowLayout, partition_windows, window_validity


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


def window_affinity(maps: torch.Tensor, grid: tuple[int, int], layout: WindowLayout) -> torch.Tensor:
    """B×1×H×W maps → B×n×w²×w² outer products of their values inside each window of the grid
    (zero at padded positions; n windows per image, as ``partition_windows`` orders them)."""
    on_grid = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)  # B×1×h×w
    windows = partition_windows(on_grid.permute(0, 2, 3, 1), layout)  # (B·n)×w²×1
    return (windows @ windows.transpose(1, 2)).reshape(maps.shape[0], -1, windows.shape[1], windows.shape[1])


def window_attention_guided_loss(
    attention_logits: torch.Tensor,
    grid: tuple[int, int],
    layout: WindowLayout,
    mask: torch.Tensor,
    side_cnn: torch.Tensor,
    side_swin: torch.Tensor,
) -> torch.Tensor:
    """The AGL of a windowed grafting point: ``attention_logits`` B×n×w²×w², the target the ground
    truth's outer product inside each window, weighted as ``attention_guided_loss``; averaged over
    the pairs of real (not padded) positions."""
    batch = attention_logits.shape[0]
    target = window_affinity(mask, grid, layout)
    with torch.no_grad():
        cnn = window_affinity(torch.sigmoid(side_cnn.detach().float()), grid, layout)
        swin = window_affinity(torch.sigmoid(side_swin.detach().float()), grid, layout)
        valid = window_validity(batch, *grid, layout, mask.device).float().reshape(batch, -1, layout.size**2, 1)
        pairs = valid @ valid.transpose(-1, -2)  # B×n×w²×w², 1 where both positions are real
        weight = (0.5 * ((target - cnn).abs() + (target - swin).abs()) + 1) * pairs
    losses = F.binary_cross_entropy_with_logits(attention_logits.float(), target, weight=weight, reduction="sum")
    return losses / pairs.sum()


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
        weights = {
            "pred": self.weights.pred,
            "side_cnn": self.weights.side_cnn,
            "side_swin": self.weights.side_swin,
        }
        for index, (logits, grid) in enumerate(zip(output.attention, output.attention_grids)):
            point = output.attention_points[index] if index < len(output.attention_points) else str(index)
            window = output.attention_windows[index] if index < len(output.attention_windows) else None
            name = f"attention/{point}"
            weights[name] = self.weights.attention_points.get(point, self.weights.attention)
            if window is None:
                terms[name] = attention_guided_loss(logits, grid, mask, output.side_cnn, output.side_swin)
            else:
                terms[name] = window_attention_guided_loss(
                    logits, grid, window, mask, output.side_cnn, output.side_swin
                )
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
