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
