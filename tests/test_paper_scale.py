"""`--scale paper` models (ResNet-50 v2, 2048-d features, Table 5's heads) take a training step.

The suite trains the tiny scale; these build each kind of paper-scale network (exemplar + LSTM,
attention pooling over stages 3 and 4, rotation, shot order, GroupNorm co-training, VITO's online
and EMA target) and run one step on a batch small enough for a CPU (2 videos, 32-px frames): every
shape of the 2048/1024-channel heads must fit, every trainable parameter must get a gradient.
"""

from __future__ import annotations

import pytest
import torch

from vivi.config import apply_overrides, preset
from vivi.models import build_model
from vivi.train.objective import VIVIObjective

SIZE = 32  # the stem and 4 stages shrink 32 px to a 1x1 map: the smallest input ResNet-50 takes


@pytest.mark.parametrize(
    "name", ["VIVI-Ex(4)", "VIVI-Ex(4)+Attn", "VIVI-Rot(2)", "VIVI-Ex(2)-Ord", "VIVI-Ex(4)-Co(10%)", "VITO"]
)
def test_a_paper_scale_model_takes_a_training_step(name):
    cfg = preset(name, "paper")
    frames = 2 if cfg.data.frames > 1 else 1
    cfg = apply_overrides(cfg, ["data.videos=2", f"data.frames={frames}", f"augment.image_size={SIZE}",
                                f"data.load_size={SIZE}"])
    if cfg.data.labelled_batch:
        cfg.model.classes = 3
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    x = torch.randn(v, k, f, 3, SIZE, SIZE)
    images, labels = (torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 2])) if cfg.data.labelled_batch else (None, None)
    out = model(x, generator=torch.Generator().manual_seed(0), images=images)
    terms = VIVIObjective(cfg.loss)(out, v, k, f, labels)
    terms["loss"].backward()
    assert all(torch.isfinite(t) for t in terms.values()), terms
    backbone = model.online.backbone if name == "VITO" else model.backbone
    assert backbone.num_features == 2048
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
