"""The VIVI network: frame encoder f, exemplar head, shot pooling p and video predictor g.

``forward`` takes the augmented frames of a batch laid out as ``[V, K, F, 3, s, s]`` and
returns what the losses need; the objective that combines them lives in
:mod:`vivi.train.objective` so the model stays a plain module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vivi.config import RunConfig
from vivi.models.backbone import build_backbone
from vivi.models.pooling import build_pooling
from vivi.models.predictors import LSTMPredictor, MLPPairPredictor


@dataclass
class VIVIOutput:
    exemplar: Tensor  # [V*K*F, exemplar_dim], L2-normalised
    predictions: Tensor | None  # [V, K-1, d] predicted shot embeddings
    keys: Tensor | None  # [V, K, d] shot embeddings to score predictions against


class VIVIModel(nn.Module):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        m = cfg.model
        self.backbone = build_backbone(m.backbone)
        dim = self.backbone.num_features
        self.exemplar_head = nn.Linear(dim, m.exemplar_dim)
        self.video_head: nn.Module | None = None
        self.predictor: nn.Module | None = None
        if cfg.loss.video_loss != "none":
            self.pool = build_pooling(m.pooling)
            self.video_head = nn.Linear(dim, m.video_dim)
            if m.predictor == "lstm":
                self.predictor = LSTMPredictor(m.video_dim, m.lstm_hidden, m.lstm_layers)
            elif m.predictor == "mlp":
                self.predictor = MLPPairPredictor(m.video_dim, m.mlp_hidden, m.mlp_out)
            else:
                raise ValueError(f"unknown predictor {m.predictor!r}")

    def forward(self, frames: Tensor) -> VIVIOutput:
        v, k, f = frames.shape[:3]
        feats = self.backbone(frames.flatten(0, 2))  # [V*K*F, D] pre-logits
        exemplar = nn.functional.normalize(self.exemplar_head(feats).float(), dim=1)
        if self.predictor is None:
            return VIVIOutput(exemplar, None, None)
        # Pool pre-logits over the frames of each shot, then project (Appendix A).
        shots = self.video_head(self.pool(feats.view(v, k, f, -1)))
        predictions, keys = self.predictor(shots)
        return VIVIOutput(exemplar, predictions, keys)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (the usual practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def exemplar_labels(v: int, k: int, f: int, device: torch.device) -> Tensor:
    """Every frame of shot (v, k) shares the exemplar id ``v*K + k``."""
    return torch.arange(v * k, device=device).repeat_interleave(f)
