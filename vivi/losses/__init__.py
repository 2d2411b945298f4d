"""Self-supervised losses: one typed module each, each tested against a slow reference."""

from vivi.losses.infonce import InfoNCELoss, info_nce, other_video_candidates
from vivi.losses.triplet import SemiHardTripletLoss, semi_hard_triplet_loss

__all__ = [
    "InfoNCELoss",
    "SemiHardTripletLoss",
    "info_nce",
    "other_video_candidates",
    "semi_hard_triplet_loss",
]
