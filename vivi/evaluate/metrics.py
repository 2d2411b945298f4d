"""The one accuracy every protocol reports."""

from __future__ import annotations

import numpy as np


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Percent of ``predicted`` equal to ``labels`` (NaN for none).

    ``100 * hits`` is an exact integer, so the one division rounds once and 131 of 1000 is written
    13.1; ``100 * mean`` rounded twice and results files read 13.100000000000001."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    hits = int(np.count_nonzero(np.asarray(predicted) == labels))
    return 100.0 * hits / labels.size


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of their recall, in percent (NaN for none).

    As ``sklearn.metrics.balanced_accuracy_score * 100``: a class absent from ``labels`` is not
    counted (predicting it only costs the classes it was predicted for). On an imbalanced test
    split it shows a probe that predicts the majority class (90% accuracy, 50% balanced).
    Summed as exact fractions, so the one division at the end rounds once, as ``accuracy`` does."""
    from fractions import Fraction

    predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return float("nan")
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.size} predictions for {labels.size} labels")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse.reshape(-1), weights=(predicted == labels), minlength=len(classes))
    total = sum(Fraction(int(h), int(n)) for h, n in zip(hits, counts))
    return float(100 * total / len(classes))
