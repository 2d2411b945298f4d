"""L = L_SF + lambda * L_V [+ gamma * L_sup]: a frame/shot-level loss (exemplar triplet, rotation, or
VITO's contrast between displaced views),
a video-level loss (InfoNCE over predicted shots or shot order prediction) and, when co-training,
the cross-entropy of the labelled images' class logits."""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

from vivi.config import LossConfig
from vivi.losses import InfoNCELoss, OrderLoss, RotationLoss, SemiHardTripletLoss
from vivi.losses.triplet import positive_pairs
from vivi.losses.vito import ViewInfoNCELoss
from vivi.models.predictors import prediction_targets
from vivi.models.vivi import VIVIOutput, exemplar_labels
from vivi.train.distributed import gather_with_grad, rank_and_world


class VIVIObjective:
    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.triplet = SemiHardTripletLoss(cfg.margin, cfg.squared)
        self.rotation = RotationLoss()
        self.infonce = InfoNCELoss(cfg.infonce_temperature)
        self.order = OrderLoss()
        self.vito = ViewInfoNCELoss(cfg.vito_temperature)

    def __call__(self, out: VIVIOutput, v: int, k: int, f: int, labels: Tensor | None = None) -> dict[str, Tensor]:
        """The loss terms and their weighted sum under ``"loss"``; ``labels`` are the labelled images' classes."""
        if self.cfg.frame_loss == "supervised":
            if out.logits is None or labels is None:
                raise ValueError("the supervised baseline needs class logits and labels")
            terms = {"loss_sf": F.cross_entropy(out.logits.float(), labels)}
        elif out.view_predictions is not None and out.view_targets is not None:
            terms = {"loss_sf": self.vito(out.view_predictions, out.view_targets)}
        elif out.rotation is not None and out.rotation_labels is not None:
            terms = {"loss_sf": self.rotation(out.rotation, out.rotation_labels)}
        elif out.exemplar is not None:
            labels_sf, pairs = exemplar_targets(v, k, f, out.exemplar.device)
            group_rows = self.cfg.triplet_group * f  # a group's exemplars are consecutive shots of F frames
            terms = {"loss_sf": self.triplet(out.exemplar, labels_sf, pairs, group_rows)}
        else:
            raise ValueError("the model output holds no frame-level loss input")
        total = terms["loss_sf"]
        if out.predictions is not None and out.keys is not None:
            terms["loss_v"] = video_infonce(
                self.infonce, out.predictions.flatten(0, 1), out.keys.flatten(0, 1), v, k,
                self.cfg.infonce_negatives == "global",
            )
        elif out.order is not None and out.order_labels is not None:
            terms["loss_v"] = self.order(out.order, out.order_labels)
        if "loss_v" in terms:
            total = total + self.cfg.video_weight * terms["loss_v"]
        if out.logits is not None and labels is not None and self.cfg.frame_loss != "supervised":
            terms["loss_sup"] = F.cross_entropy(out.logits.float(), labels)
            total = total + self.cfg.sup_weight * terms["loss_sup"]
        terms["loss"] = total
        return terms


@functools.lru_cache(maxsize=16)
def exemplar_targets(v: int, k: int, f: int, device: torch.device) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The exemplar ids of a ``V x K x F`` batch and their anchor-positive pairs, made once per batch
    shape and device: the pairs are found on the CPU, so no step waits for the GPU to count them."""
    labels = exemplar_labels(v, k, f, torch.device("cpu"))
    anchor, positive = positive_pairs(labels)
    return labels.to(device), (anchor.to(device), positive.to(device))


def video_infonce(
    infonce: InfoNCELoss, predictions: Tensor, keys: Tensor, v: int, k: int, global_negatives: bool = True
) -> Tensor:
    """InfoNCE of this rank's predictions [V*(K-1), d] against shot embeddings ``keys`` [V*K, d].

    With ``global_negatives`` and several ranks, every rank's keys compete (gathered with a
    gradient-summing all-gather), and ids are offset by this rank's place in the global batch:
    each rank's loss is the one-process loss restricted to its queries, and the mean over ranks
    is the global loss.
    """
    query_video, key_video, positive = prediction_targets(v, k, predictions.device)
    rank, world = rank_and_world()
    if global_negatives and world > 1:
        keys = gather_with_grad(keys)
        query_video, positive = query_video + rank * v, positive + rank * v * k
        key_video = torch.arange(world * v, device=keys.device).repeat_interleave(k)
    return infonce(predictions, keys, query_video, key_video, positive)
