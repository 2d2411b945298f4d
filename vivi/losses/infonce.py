"""InfoNCE over shot embeddings (CPC, van den Oord et al. 2018), as VIVI's video-level loss.

A prediction of shot ``t`` of video ``v`` (made from the shots before it) must score the true
shot embedding above every candidate negative. VIVI's negatives are *all shot embeddings of the
other videos* in the batch (its footnote 2), not only those at the same step; shots of the same
video other than the target are not candidates. Positives and candidates are defined by ids, so
the same code works for embeddings gathered from several ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def info_nce(scores: Tensor, positive: Tensor, candidates: Tensor) -> Tensor:
    """Mean of ``-log softmax(scores[i, candidates[i]])[positive[i]]`` over rows.

    scores: [N, M] prediction-vs-key scores; positive: [N] column of each row's target;
    candidates: [N, M] bool, the keys each row competes against (its positive must be one).
    """
    masked = scores.float().masked_fill(~candidates, float("-inf"))
    return (torch.logsumexp(masked, dim=1) - scores.float().gather(1, positive[:, None]).squeeze(1)).mean()


def other_video_candidates(query_video: Tensor, key_video: Tensor, positive: Tensor) -> Tensor:
    """Candidate mask: the positive key plus every key from a different video."""
    mask = query_video[:, None] != key_video[None, :]
    # scatter, not ``mask[rows, positive] = True``: that index_put makes a GPU step wait on the CPU
    return mask.scatter_(1, positive[:, None], True)


class InfoNCELoss(nn.Module):
    """Score predictions against shot embeddings by dot product (the paper's bilinear score)."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, predictions: Tensor, keys: Tensor, query_video: Tensor, key_video: Tensor, positive: Tensor
    ) -> Tensor:
        """predictions [N, D] for targets ``keys[positive]``; keys [M, D] with video ids ``key_video``."""
        scores = predictions.float() @ keys.float().t() / self.temperature
        return info_nce(scores, positive, other_video_candidates(query_video, key_video, positive))
