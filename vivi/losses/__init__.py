"""Self-supervised losses: one typed module each, each tested against a slow reference."""

from vivi.losses.infonce import InfoNCELoss, info_nce, other_video_candidates
from vivi.losses.order import OrderLoss, random_reversal
from vivi.losses.rotation import RotationLoss, rotated_batch
from vivi.losses.triplet import SemiHardTripletLoss, semi_hard_triplet_loss

__all__ = [
    "InfoNCELoss",
    "OrderLoss",
    "RotationLoss",
    "SemiHardTripletLoss",
    "info_nce",
    "other_video_candidates",
    "random_reversal",
    "rotated_batch",
    "semi_hard_triplet_loss",
]
