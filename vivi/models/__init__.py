"""Frame encoder (timm ResNet v2), pooling (mean, attention), heads, video-level predictors, and
the two networks trained: VIVI's and VITO's."""

from __future__ import annotations

from torch import nn

from vivi.config import RunConfig


def build_model(cfg: RunConfig) -> nn.Module:
    """The network ``cfg`` trains: :class:`VITOModel` for ``loss.frame_loss=vito``, else :class:`VIVIModel`."""
    from vivi.models.vito import VITOModel
    from vivi.models.vivi import VIVIModel

    return VITOModel(cfg) if cfg.loss.frame_loss == "vito" else VIVIModel(cfg)
