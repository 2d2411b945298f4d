"""Pooling p: many feature vectors -> one embedding.

``mean`` is VIVI's parameter-free average of a shot's frame embeddings. ``attention`` is
VITO's learned attention pooling: a small 1x1-convolution MLP scores every spatial position of a
backbone stage's feature map, a softmax over positions turns the scores into weights that sum
to one, and the features are averaged with those weights; with several stages (``stages=[3, 4]``,
multi-scale) each stage has its own scorer and the pooled vectors are concatenated. As VIVI's
shot pooling the positions are those of all F frames of a shot; as VITO's view pooling, those of
one frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MeanPool(nn.Module):
    """The paper's parameter-free average over the frames of a shot: ``[..., F, D] -> [..., D]``."""

    needs_maps = False

    def forward(self, frames: Tensor) -> Tensor:
        return frames.mean(dim=-2)


class AttentionPool(nn.Module):
    """``[B, C, N]`` features at N positions -> ``[B, C]`` weighted by a softmax over positions.

    The scorer sees each position alone (1x1 convolutions), so the mask it draws can use only
    what is there, not where it is, as in VITO's Figure B.1.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Conv1d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv1d(hidden, 1, 1)
        )

    def weights(self, x: Tensor) -> Tensor:
        """``[B, N]`` attention weights (each row sums to one)."""
        return self.score(x).squeeze(1).float().softmax(dim=-1).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcn,bn->bc", x, self.weights(x))


class MultiScaleAttentionPool(nn.Module):
    """One :class:`AttentionPool` per backbone stage; the pooled vectors concatenated.

    Input: one ``[B, G, C_s, h_s, w_s]`` map per stage, where the G maps of a group (the F frames
    of a shot, or 1 for a single view) are pooled together; output ``[B, sum C_s]``.
    """

    needs_maps = True

    def __init__(self, channels: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.pools = nn.ModuleList(AttentionPool(c, hidden) for c in channels)
        self.out_dim = sum(channels)

    @staticmethod
    def _positions(m: Tensor) -> Tensor:
        """``[B, G, C, h, w]`` -> ``[B, C, G*h*w]``: every position of every map of a group."""
        b, g, c, h, w = m.shape
        return m.permute(0, 2, 1, 3, 4).reshape(b, c, g * h * w)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        return torch.cat([pool(self._positions(m)) for pool, m in zip(self.pools, maps)], dim=1)

    def attention(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """Per stage, the weights ``[B, G, h, w]`` laid out as the maps (for the attention images)."""
        return [
            pool.weights(self._positions(m)).view(m.shape[0], m.shape[1], *m.shape[3:])
            for pool, m in zip(self.pools, maps)
        ]


def stage_channels(backbone: nn.Module, stages: Sequence[int]) -> list[int]:
    """Channels of timm feature indices ``stages`` (1..4 are the ResNet stages; 0 is the stem)."""
    info = backbone.feature_info
    if any(not 0 <= s < len(info) for s in stages):
        raise ValueError(f"model.attention_stages={list(stages)}: valid stages are 0..{len(info) - 1}")
    return [info[s]["num_chs"] for s in stages]


def build_pooling(name: str, backbone: nn.Module | None = None, stages: Sequence[int] = (4,), hidden: int = 256) -> nn.Module:
    """``mean`` over frame embeddings, or ``attention`` over the maps of ``stages`` of ``backbone``."""
    if name == "mean":
        return MeanPool()
    if name == "attention":
        if backbone is None:
            raise ValueError("attention pooling needs the backbone to size its scorers")
        return MultiScaleAttentionPool(stage_channels(backbone, stages), hidden)
    raise ValueError(f"unknown pooling {name!r}; available: mean, attention")
