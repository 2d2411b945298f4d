"""Weighted kNN on L2-normalised frozen features, k and temperature chosen on val.

Each query's top-k neighbours (cosine similarity) vote for their class with weight
exp(sim / T), as in InstDisc (Wu et al. 2018) and DINO's kNN evaluation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from vivi.evaluate.metrics import accuracy, balanced_accuracy
import torch
import torch.nn.functional as F

DEFAULT_KS = (1, 5, 10, 20, 50)
DEFAULT_TEMPERATURES = (0.02, 0.07, 0.2, 1.0)
# Similarity entries per chunk of queries ([chunk, bank] float32): 2**24 is 64 MiB.
CHUNK_ELEMENTS = 2**24


def knn_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
) -> dict:
    """Sweep (k, T) with train as the memory bank scored on val, then classify test with train + val.

    Accuracies are in percent. k larger than the train set is clipped to it before the
    sweep (duplicates merged), so the reported ``k`` is the one validated and used on test.
    Ties in val accuracy go to the smaller k, then the smaller T. Ties in a vote go to the
    smallest label. Returns accuracy, balanced_accuracy, val_accuracy, k, temperature, n_train, n_val, n_test
    and the sweep ([{"k", "temperature", "val_accuracy"}] per pair).
    """
    train_y, val_y, test_y = (np.asarray(y) for y in (train_y, val_y, test_y))
    if len(train_y) == 0 or len(val_y) == 0 or len(test_y) == 0:
        raise ValueError("knn_probe needs non-empty train, val and test splits")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive, got {tuple(temperatures)}")
    train_z, val_z, test_z = (_normalized(x) for x in (train_x, val_x, test_x))
    ks = sorted({min(int(k), len(train_y)) for k in ks})
    temperatures = sorted({float(t) for t in temperatures})

    val_pred = knn_predict(train_z, train_y, val_z, ks, temperatures)
    sweep = [
        {"k": k, "temperature": t, "val_accuracy": accuracy(val_pred[k, t], val_y)}
        for k in ks
        for t in temperatures
    ]
    best = max(sweep, key=lambda s: s["val_accuracy"])  # max keeps the first: smallest k, then T
    k, t = best["k"], best["temperature"]
    bank_z, bank_y = torch.cat([train_z, val_z]), np.concatenate([train_y, val_y])
    test_pred = knn_predict(bank_z, bank_y, test_z, [k], [t])[k, t]
    return {
        "accuracy": accuracy(test_pred, test_y),
        "balanced_accuracy": balanced_accuracy(test_pred, test_y),
        "val_accuracy": best["val_accuracy"],
        "k": k,
        "temperature": t,
        "n_train": len(train_y),
        "n_val": len(val_y),
        "n_test": len(test_y),
        "sweep": sweep,
    }


def knn_predict(
    bank_x: np.ndarray | torch.Tensor,
    bank_y: np.ndarray,
    query_x: np.ndarray | torch.Tensor,
    ks: Sequence[int],
    temperatures: Sequence[float],
    chunk_size: int | None = None,
) -> dict[tuple[int, float], np.ndarray]:
    """Predicted labels of every query for each (k, T): ``{(k, T): labels [n_query]}``.

    Features are L2-normalised here (again, if already), so similarities are cosines.
    k is clipped to the bank size (the dict keys keep the k asked for). Queries are
    processed ``chunk_size`` at a time (default: about CHUNK_ELEMENTS similarities per
    chunk), so memory is bounded by the bank size, not the number of queries. Weights are
    exp((sim - max sim) / T): the per-query shift leaves the vote unchanged and keeps
    small temperatures from overflowing.
    """
    bank_z, query_z = _normalized(bank_x), _normalized(query_x)
    classes, bank_idx = np.unique(np.asarray(bank_y), return_inverse=True)
    bank_idx = torch.from_numpy(bank_idx.reshape(-1).astype(np.int64))
    n_bank, n_classes = len(bank_idx), len(classes)
    if n_bank == 0 or n_bank != len(bank_z):
        raise ValueError(f"bank has {len(bank_z)} features and {n_bank} labels")
    pairs = [(k, float(t)) for k in ks for t in temperatures]
    k_max = min(max(k for k, _ in pairs), n_bank)
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // n_bank)
    out = {pair: [] for pair in pairs}
    with torch.inference_mode():
        for start in range(0, len(query_z), chunk):
            sims = query_z[start : start + chunk] @ bank_z.T
            top_sim, top_i = sims.topk(k_max, dim=1)  # sorted, most similar first
            top_label = bank_idx[top_i]
            shifted = top_sim - top_sim[:, :1]
            for k, t in pairs:
                kk = min(k, n_bank)
                votes = torch.zeros(len(top_sim), n_classes, dtype=top_sim.dtype)
                votes.scatter_add_(1, top_label[:, :kk], shifted[:, :kk].div(t).exp())
                out[k, t].append(votes.argmax(dim=1))  # first maximum: smallest label wins ties
    return {pair: classes[torch.cat(preds).numpy()] if preds else classes[:0] for pair, preds in out.items()}


def _normalized(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.float()
    return F.normalize(x.reshape(len(x), -1), dim=1)

