"""VITO (Parthasarathy et al. 2023): an online network and its EMA target see two temporally
displaced views of a shot; attention pooling keeps the positions likely to predict the other view.

online: backbone -> multi-scale attention pooling -> projector -> predictor
target: EMA copies of backbone, pooling and projector (no gradient)
Only the online backbone is exported; the heads and the target serve the objective.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vivi.config import RunConfig
from vivi.models.backbone import build_backbone
from vivi.models.ema import ema_update
from vivi.models.pooling import build_pooling
from vivi.models.vivi import VIVIOutput


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    """BYOL's projector/predictor shape: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class _Encoder(nn.Module):
    """backbone -> pooling (attention over stage maps, or mean pre-logits) -> projector."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        m = cfg.model
        self.backbone = build_backbone(m.backbone)
        self.pool = build_pooling(m.pooling, self.backbone, m.attention_stages, m.attention_hidden)
        self.stages = list(m.attention_stages)
        dim = self.pool.out_dim if self.pool.needs_maps else self.backbone.num_features
        self.projector = _mlp(dim, m.projector_hidden, m.projector_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool.needs_maps:
            _, maps = self.backbone.forward_intermediates(x, indices=self.stages, norm=True)
            pooled = self.pool([m[:, None] for m in maps])  # each view pooled over its own positions
        else:
            pooled = self.backbone(x)
        return self.projector(pooled)


class VITOModel(nn.Module):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.online = _Encoder(cfg)
        self.predictor = _mlp(cfg.model.projector_dim, cfg.model.projector_hidden, cfg.model.projector_dim)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def forward(
        self, frames: Tensor, generator: torch.Generator | None = None, images: Tensor | None = None
    ) -> VIVIOutput:
        """frames ``[V, 1, 2, 3, s, s]``: two views per shot -> online predictions and target projections."""
        if images is not None:
            raise ValueError("VITO does not co-train with labelled images")
        v = frames.shape[0]
        x = frames.flatten(0, 2)
        predictions = self.predictor(self.online(x))
        with torch.no_grad():
            targets = self.target(x)
        return VIVIOutput(view_predictions=predictions.view(v, 2, -1), view_targets=targets.view(v, 2, -1))

    def update_target(self, momentum: float) -> None:
        ema_update(self.target, self.online, momentum)
