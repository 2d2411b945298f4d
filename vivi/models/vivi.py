"""The VIVI network: frame encoder f, frame-level head, shot pooling p and video-level head g.

``forward`` takes the augmented frames of a batch laid out as ``[V, K, F, 3, s, s]`` and
returns what the losses need; the objective that combines them lives in
:mod:`vivi.train.objective` so the model stays a plain module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vivi.config import RunConfig
from vivi.losses.order import random_reversal
from vivi.losses.rotation import ROTATIONS, rotated_batch
from vivi.models.backbone import build_backbone
from vivi.models.pooling import build_pooling
from vivi.models.predictors import LSTMPredictor, MLPPairPredictor, OrderPredictor


@dataclass
class VIVIOutput:
    """Only the fields of the configured losses are set."""

    exemplar: Tensor | None = None  # [V*K*F, exemplar_dim], L2-normalised (frame_loss exemplar)
    predictions: Tensor | None = None  # [V, K-1, d] predicted shot embeddings (video_loss infonce)
    keys: Tensor | None = None  # [V, K, d] shot embeddings to score predictions against
    rotation: Tensor | None = None  # [4*V*K*F, 4] rotation logits of all copies (frame_loss rotation)
    rotation_labels: Tensor | None = None  # [4*V*K*F] quarter turns of each copy
    order: Tensor | None = None  # [V] logits "this shot sequence is reversed" (video_loss order)
    order_labels: Tensor | None = None  # [V] 1.0 where the sequence was reversed
    logits: Tensor | None = None  # [B, classes] class logits of the labelled images (co-training)
    view_predictions: Tensor | None = None  # [V, 2, d] VITO: online predictions of the two views
    view_targets: Tensor | None = None  # [V, 2, d] VITO: EMA-target projections of the two views


class VIVIModel(nn.Module):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        m = cfg.model
        self.backbone = build_backbone(m.backbone)
        dim = self.backbone.num_features
        self.exemplar_head: nn.Module | None = None
        self.rotation_head: nn.Module | None = None
        self.supervised = cfg.loss.frame_loss == "supervised"  # the labelled-images-only baseline
        if cfg.loss.frame_loss == "rotation":
            self.rotation_head = nn.Linear(dim, ROTATIONS)
        elif not self.supervised:
            self.exemplar_head = nn.Linear(dim, m.exemplar_dim)
        if self.supervised and m.classes < 1:
            raise ValueError("loss.frame_loss=supervised needs model.classes (set from the labelled folder)")
        self.classifier = nn.Linear(dim, m.classes) if m.classes > 0 else None
        self.video_head: nn.Module | None = None
        self.predictor: nn.Module | None = None
        self.order_predictor: nn.Module | None = None
        if cfg.loss.video_loss != "none":
            self.pool = build_pooling(m.pooling, self.backbone, m.attention_stages, m.attention_hidden)
            self.stages = list(m.attention_stages)
            self.video_head = nn.Linear(self.pool.out_dim if self.pool.needs_maps else dim, m.video_dim)
            if cfg.loss.video_loss == "order":
                self.order_predictor = OrderPredictor(m.video_dim, cfg.data.shots, m.order_hidden)
            elif m.predictor == "lstm":
                self.predictor = LSTMPredictor(m.video_dim, m.lstm_hidden, m.lstm_layers)
            elif m.predictor == "mlp":
                self.predictor = MLPPairPredictor(m.video_dim, m.mlp_hidden, m.mlp_out)
            else:
                raise ValueError(f"unknown predictor {m.predictor!r}")

    def forward(
        self, frames: Tensor, generator: torch.Generator | None = None, images: Tensor | None = None
    ) -> VIVIOutput:
        """``generator`` draws the shot-order reversals; only the order loss needs it.

        ``images`` (co-training): augmented labelled images ``[B, 3, s, s]``, encoded in the same
        backbone pass as the frames (GroupNorm keeps the two sources' statistics apart) and classified.
        """
        v, k, f = frames.shape[:3]
        x = frames.flatten(0, 2)
        out = VIVIOutput()
        if self.rotation_head is not None:
            x, out.rotation_labels = rotated_batch(x)
        n = x.shape[0]
        if images is not None:
            if self.classifier is None:
                raise ValueError("labelled images need a classification head: set model.classes")
            x = torch.cat([x, images])
        maps: list[Tensor] = []
        if self.video_head is not None and self.pool.needs_maps:  # attention pooling reads stage maps
            final, maps = self.backbone.forward_intermediates(x, indices=self.stages, norm=True)
            feats = self.backbone.forward_head(final)
        else:
            feats = self.backbone(x)  # [V*K*F, D] pre-logits (x4 with rotated copies, + B labelled images)
        if images is not None:
            out.logits, feats = self.classifier(feats[n:]), feats[:n]
        if self.supervised:
            out.logits = self.classifier(feats)
        elif self.rotation_head is not None:
            out.rotation = self.rotation_head(feats)
            feats = feats[: v * k * f]  # the unrotated copies come first; only they make shots
        else:
            # each embedding L2-normalised (Appendix A, "L2-normalization of the features"). The code of
            # [32] normalises along axis 0 (each feature over the batch); we read the paper as the usual
            # per-embedding normalisation, which makes squared distances 2 - 2 cos and margin 0.5 meaningful
            out.exemplar = nn.functional.normalize(self.exemplar_head(feats).float(), dim=1)
        if self.video_head is None:
            return out
        if maps:  # attention over every position of the F frames of a shot, per stage
            shot_maps = [m[: v * k * f].reshape(v * k, f, *m.shape[1:]) for m in maps]
            shots = self.video_head(self.pool(shot_maps)).view(v, k, -1)
        else:  # the paper: pool pre-logits over the frames of each shot, then project (Appendix A)
            shots = self.video_head(self.pool(feats.view(v, k, f, -1)))
        if self.order_predictor is not None:
            if generator is None:
                raise ValueError("the shot order loss draws its reversals from an explicit generator: pass generator=")
            reordered, out.order_labels = random_reversal(shots, generator)
            out.order = self.order_predictor(reordered)
        else:
            out.predictions, out.keys = self.predictor(shots)
        return out


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
