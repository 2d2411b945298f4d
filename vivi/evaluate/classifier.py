"""Image classifiers for curation: a co-trained run's own head, or a linear probe fitted on a
labelled image folder over any encoder's frozen features (a run, a backbone file, timm:NAME)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vivi.data.augment import normalize
from vivi.data.images import load_image, parse_labelled, scan_images
from vivi.errors import UserError
from vivi.evaluate.encoders import load_encoder
from vivi.train.checkpoint import load_run_model


@dataclass
class ImageClassifier:
    """``probabilities(uint8 [N, 3, S, S]) -> [N, C]`` at input size ``size``, with class names."""

    classes: list[str]
    size: int
    probabilities: Callable[[torch.Tensor], np.ndarray]


def _inputs(images: torch.Tensor) -> torch.Tensor:
    return normalize(images.float() / 255)


def head_classifier(run: Path) -> ImageClassifier:
    """A co-trained run (``VIVI-Ex(4)-Co(...)``): its backbone and linear classification head."""
    model, cfg = load_run_model(run)
    head = getattr(model, "classifier", None)
    if head is None:
        raise UserError(f"{run}: has no classification head (not co-trained); add --labelled imagefolder:DIR to fit one")
    classes = list(cfg.model.class_names) or [f"class{i}" for i in range(head.out_features)]
    if not cfg.model.class_names and cfg.data.labelled:  # runs from before class names were saved
        try:
            found = scan_images(parse_labelled(cfg.data.labelled), labelled=True).classes
            classes = found if len(found) == len(classes) else classes
        except UserError:
            pass  # the labelled folder moved: numbered classes

    @torch.inference_mode()
    def probabilities(images: torch.Tensor) -> np.ndarray:
        return head(model.backbone(_inputs(images))).softmax(-1).numpy()

    return ImageClassifier(classes, cfg.augment.image_size, probabilities)


def probe_classifier(model: str, labelled: str, batch: int = 128) -> ImageClassifier:
    """Logistic regression on ``model``'s frozen features of every image of ``imagefolder:DIR``."""
    enc = load_encoder(model)
    folder = scan_images(parse_labelled(labelled), labelled=True)

    @torch.inference_mode()
    def features(images: torch.Tensor) -> np.ndarray:
        return np.concatenate([enc.model(_inputs(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])

    x = features(torch.stack([load_image(p, enc.image_size) for p in folder.paths]))
    scaler = StandardScaler().fit(x)
    fit = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x), folder.labels)

    def probabilities(images: torch.Tensor) -> np.ndarray:
        proba = fit.predict_proba(scaler.transform(features(images)))
        full = np.zeros((len(images), len(folder.classes)))
        full[:, fit.classes_] = proba
        return full

    return ImageClassifier(folder.classes, enc.image_size, probabilities)
