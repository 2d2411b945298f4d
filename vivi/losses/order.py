"""Shot order prediction as a video-level loss (VIVI section 3.3).

Each video's sequence of shot embeddings is reversed with probability 1/2 and a predictor
classifies, from the concatenated embeddings, whether it was (label 1) or not (label 0). The
coin flips come from an explicit generator so a run is reproducible and resumable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def random_reversal(shots: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """shots ``[V, K, D]`` -> (shots with the K axis of some videos reversed, labels ``[V]``
    float, 1 where reversed)."""
    flips = torch.rand(shots.shape[0], generator=generator, device=generator.device) < 0.5
    flips = flips.to(shots.device)
    reordered = torch.where(flips[:, None, None], shots.flip(1), shots)
    return reordered, flips.float()


class OrderLoss(nn.Module):
    """Binary cross-entropy of the order logits against the reversal labels: the paper's 2-class
    cross-entropy (Section 3.3) with one logit, ``softmax([0, x]) = sigmoid(x)``."""

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
