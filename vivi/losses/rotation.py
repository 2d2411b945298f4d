"""Rotation prediction (Gidaris et al. 2018) as a frame-level loss.

As in the paper (Appendix B, following Kolesnikov et al. 2019), the 3 rotated copies of the
mini-batch are appended along the batch dimension and a 4-way head classifies the rotation of
every copy. There is no explicit shot-level loss: invariance across the frames of a shot comes
only through shot pooling and the video-level loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotated_batch(images: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, C, H, W]`` -> (``[4N, C, H, W]``: the batch then its copies rotated by 90, 180, 270
    degrees with ``torch.rot90`` over (H, W); labels ``[4N]``: the number of quarter turns).

    The unrotated images stay the first N rows, so shot pooling can slice them out.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
    copies = torch.cat([torch.rot90(images, r, dims=(-2, -1)) for r in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return copies, labels


class RotationLoss(nn.Module):
    """Cross-entropy of the 4-way rotation logits, averaged over all copies."""

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.float(), labels)
