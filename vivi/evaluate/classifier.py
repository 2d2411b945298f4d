"""Image classifiers for curation: a co-trained run's own head, or a linear probe fitted on a
labelled image folder over any encoder's frozen features (a run, a backbone file, timm:NAME)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vivi.data.augment import network_input
from vivi.data.images import load_readable, parse_labelled, scan_images
from vivi.errors import UserError
from vivi.data.tasks import stratified_holdout
from vivi.evaluate.encoders import load_encoder
from vivi.evaluate.linear import fit_linear_classifier
from vivi.train.checkpoint import load_run_model


@dataclass
class ImageClassifier:
    """``probabilities(uint8 [N, 3, S, S]) -> [N, C]`` at input size ``size``, with class names."""

    classes: list[str]
    size: int
    probabilities: Callable[[torch.Tensor], np.ndarray]


def head_classifier(run: Path, instead: str = "add --labelled imagefolder:DIR to fit one") -> ImageClassifier:
    """A co-trained run (``VIVI-Ex(4)-Co(...)``): its backbone and linear classification head.
    ``instead``: what the command offers for a run without one."""
    model, cfg = load_run_model(run)
    head = getattr(model, "classifier", None)
    if head is None:
        raise UserError(f"{run}: has no classification head (not co-trained); {instead}")
    classes = list(cfg.model.class_names) or [f"class{i}" for i in range(head.out_features)]
    if not cfg.model.class_names and cfg.data.labelled:  # runs from before class names were saved
        try:
            found = scan_images(parse_labelled(cfg.data.labelled), labelled=True).classes
            classes = found if len(found) == len(classes) else classes
        except UserError:
            pass  # the labelled folder moved: numbered classes

    @torch.inference_mode()
    def probabilities(images: torch.Tensor) -> np.ndarray:
        return head(model.backbone(network_input(images))).softmax(-1).numpy()

    return ImageClassifier(classes, cfg.augment.image_size, probabilities)


def probe_classifier(model: str, labelled: str, batch: int = 128) -> ImageClassifier:
    """The linear probe (C chosen on a held-out fifth, refit on all) on ``model``'s frozen features
    of the images of ``imagefolder:DIR``.

    The encoder is put in eval mode here rather than trusted to arrive so: in train mode BatchNorm
    used each batch's statistics (an image's class depended on its batch-mates) and updated them."""
    enc = load_encoder(model)
    enc.model.eval()
    folder = scan_images(parse_labelled(labelled), labelled=True)

    @torch.inference_mode()
    def features(images: torch.Tensor) -> np.ndarray:
        return np.concatenate([enc.model(network_input(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])

    images, kept = load_readable(folder.paths, enc.image_size, str(folder.root))
    x, labels = features(images), folder.labels[kept]
    lost = sorted(set(range(len(folder.classes))) - set(labels.tolist()))
    if lost:
        raise UserError(f"{folder.root}: no readable image left in class {', '.join(folder.classes[c] for c in lost)}")
    fit_idx, val_idx = stratified_holdout(labels, 0.2, seed=0)
    if len(val_idx) == 0:
        raise UserError(f"{folder.root}: too few images to fit and validate a classifier (need 2+ per class)")
    clf, _ = fit_linear_classifier(x[fit_idx], labels[fit_idx], x[val_idx], labels[val_idx])

    def probabilities(images: torch.Tensor) -> np.ndarray:
        full = np.zeros((len(images), len(folder.classes)))
        full[:, clf.classes] = clf.proba(features(images))
        return full

    return ImageClassifier(folder.classes, enc.image_size, probabilities)
