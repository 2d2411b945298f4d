"""VITO's contrastive objective between two temporally displaced views of one shot.

Each view's online prediction must pick out the EMA target's projection of the *other* view
among the target projections of every other pair in the (global) batch. Both directions are
averaged (symmetric), scores are cosine similarities over a temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vivi.train.distributed import gather_with_grad, rank_and_world


def view_infonce(predictions: Tensor, targets: Tensor, temperature: float = 0.1) -> Tensor:
    """predictions, targets: ``[B, 2, d]`` (pair, view); negatives are the other pairs' targets on all ranks."""
    b = predictions.shape[0]
    rank, _ = rank_and_world()
    q = F.normalize(predictions.float(), dim=-1)
    k = F.normalize(gather_with_grad(targets.detach().float().contiguous()), dim=-1)  # [world*B, 2, d]
    labels = torch.arange(b, device=q.device) + rank * b
    loss = 0.0
    for view in (0, 1):  # view 0 predicts view 1's target and the other way round
        scores = q[:, view] @ k[:, 1 - view].t() / temperature  # [B, world*B]
        loss = loss + F.cross_entropy(scores, labels)
    return loss / 2


class ViewInfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return view_infonce(predictions, targets, self.temperature)
