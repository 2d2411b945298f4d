"""Semi-hard triplet loss (FaceNet, Schroff et al. 2015) for exemplar SSL.

Exemplar SSL at scale (Kolesnikov et al. 2019, used by VIVI) replaces the exemplar classifier by a
triplet loss over L2-normalised embeddings: views of the same exemplar (an image's
augmentations, or the frames of one shot) are positives, everything else negatives. For each
anchor-positive pair the negative is the *semi-hard* one: the closest negative that is still
farther than the positive; if there is none, the farthest negative. This follows TensorFlow's
``triplet_semihard_loss`` (the implementation the paper's code base used), with squared
Euclidean distances by default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pairwise_distances(x: Tensor, squared: bool = True) -> Tensor:
    """Euclidean distance matrix, clamped at 0 (round-off) and with a safe sqrt gradient."""
    sq = x.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)
    if squared:
        return d
    zero = d == 0
    return torch.where(zero, torch.zeros_like(d), (d + zero.to(d.dtype)).sqrt())


def semi_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.5, squared: bool = True) -> Tensor:
    """Mean over all anchor-positive pairs of ``relu(margin + d(a,p) - d(a,n_semi_hard))``.

    Runs in O(N^2 log N) time and O(N^2) memory (sorted negatives + ``searchsorted``) rather
    than materialising the N^3 triplet cube, so a whole per-GPU batch fits.
    """
    emb = embeddings.float()
    n = emb.shape[0]
    dist = pairwise_distances(emb, squared=squared)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    positive = same & ~eye
    if not positive.any():
        return emb.sum() * 0.0
    negative = ~same
    # Per anchor: negative distances sorted ascending, non-negatives pushed to +inf.
    inf = torch.finfo(dist.dtype).max
    neg_sorted, _ = torch.sort(torch.where(negative, dist, torch.full_like(dist, inf)), dim=1)
    num_neg = negative.sum(1)  # [N]
    # First negative strictly farther than the positive: the semi-hard negative, if any.
    idx = torch.searchsorted(neg_sorted.detach().contiguous(), dist.detach().contiguous(), right=True)
    has_outside = idx < num_neg[:, None]
    outside = torch.gather(neg_sorted, 1, idx.clamp_max(n - 1))
    last = (num_neg - 1).clamp_min(0)[:, None].expand(n, n)
    inside = torch.gather(neg_sorted, 1, last)  # the farthest negative
    neg = torch.where(has_outside, outside, inside)
    valid = positive & (num_neg > 0)[:, None]
    losses = (margin + dist - neg).clamp_min(0.0)
    return (losses * valid).sum() / valid.sum().clamp_min(1)


class SemiHardTripletLoss(nn.Module):
    """Module form of :func:`semi_hard_triplet_loss`; embeddings are L2-normalised by the caller."""

    def __init__(self, margin: float = 0.5, squared: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.squared = squared

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return semi_hard_triplet_loss(embeddings, labels, self.margin, self.squared)
