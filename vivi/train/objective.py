"""L = L_SF + lambda * L_V: the frame/shot-level exemplar loss plus the video-level InfoNCE."""

from __future__ import annotations

from torch import Tensor

from vivi.config import LossConfig
from vivi.losses import InfoNCELoss, SemiHardTripletLoss
from vivi.models.predictors import prediction_targets
from vivi.models.vivi import VIVIOutput, exemplar_labels


class VIVIObjective:
    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.triplet = SemiHardTripletLoss(cfg.margin, cfg.squared)
        self.infonce = InfoNCELoss(cfg.infonce_temperature)

    def __call__(self, out: VIVIOutput, v: int, k: int, f: int) -> dict[str, Tensor]:
        """The loss terms and their weighted sum under ``"loss"``."""
        device = out.exemplar.device
        terms = {"loss_sf": self.triplet(out.exemplar, exemplar_labels(v, k, f, device))}
        total = terms["loss_sf"]
        if out.predictions is not None and out.keys is not None:
            query_video, key_video, positive = prediction_targets(v, k, device)
            predictions = out.predictions.flatten(0, 1)
            keys = out.keys.flatten(0, 1)
            terms["loss_v"] = self.infonce(predictions, keys, query_video, key_video, positive)
            total = total + self.cfg.video_weight * terms["loss_v"]
        terms["loss"] = total
        return terms
