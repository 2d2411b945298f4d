"""Shot pooling p: frame embeddings of one shot -> one shot embedding."""

from __future__ import annotations

from torch import Tensor, nn


class MeanPool(nn.Module):
    """The paper's parameter-free average over the frames of a shot: ``[..., F, D] -> [..., D]``."""

    def forward(self, frames: Tensor) -> Tensor:
        return frames.mean(dim=-2)


def build_pooling(name: str) -> nn.Module:
    if name == "mean":
        return MeanPool()
    raise ValueError(f"unknown pooling {name!r}; available: mean")
