"""The kNN protocol: weighted vote against a slow reference, (k, T) selection, and the suite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_linear import TinyCNN, _blobs, _split3, _task
from vivi.evaluate import suite
from vivi.evaluate.knn import knn_predict, knn_probe


def _reference(bank_x, bank_y, query_x, k, t):
    """One query at a time, in float64: cosine top-k, exp(sim / T) votes, smallest label on ties."""
    bank = [np.asarray(b, np.float64) / np.linalg.norm(b) for b in bank_x]
    preds = []
    for q in query_x:
        q = np.asarray(q, np.float64) / np.linalg.norm(q)
        sims = [float(q @ b) for b in bank]
        order = sorted(range(len(bank)), key=lambda i: -sims[i])[: min(k, len(bank))]
        votes: dict[int, float] = {}
        for i in order:
            votes[int(bank_y[i])] = votes.get(int(bank_y[i]), 0.0) + math.exp(sims[i] / t)
        best = max(votes.values())
        preds.append(min(c for c, v in votes.items() if v == best))
    return np.array(preds)


@pytest.mark.parametrize("k, t", [(1, 0.07), (5, 0.02), (10, 0.2), (20, 1.0), (500, 0.07)])
def test_predictions_match_slow_reference(k, t):
    rng = np.random.default_rng(0)
    bank_x, bank_y = rng.normal(size=(120, 16)), rng.integers(0, 4, 120)
    query_x = rng.normal(size=(37, 16))
    got = knn_predict(bank_x, bank_y, query_x, [k], [t], chunk_size=8)[k, t]  # several chunks, a ragged last one
    np.testing.assert_array_equal(got, _reference(bank_x, bank_y, query_x, k, t))


def test_probe_matches_reference_accuracy_and_chunking_changes_nothing():
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 300, classes=3, dim=8, spread=6.0)  # overlapping: accuracy well below 100
    tx, ty, vx, vy, sx, sy = _split3(x, y, 150, 50)
    result = knn_probe(tx, ty, vx, vy, sx, sy)
    k, t = result["k"], result["temperature"]
    ref = _reference(np.concatenate([tx, vx]), np.concatenate([ty, vy]), sx, k, t)
    assert result["accuracy"] == pytest.approx(100.0 * np.mean(ref == sy))
    assert result["val_accuracy"] == pytest.approx(100.0 * np.mean(_reference(tx, ty, vx, k, t) == vy))
    whole = knn_predict(tx, ty, sx, [1, 5, 50], [0.02, 1.0])
    chunked = knn_predict(tx, ty, sx, [1, 5, 50], [0.02, 1.0], chunk_size=7)
    assert whole.keys() == chunked.keys()
    assert all(np.array_equal(whole[p], chunked[p]) for p in whole)


def test_hand_worked_tiny_case():
    # Query along x. Neighbours: label 0 at cos 1.0; label 1 at cos 0.8 and 0.6 (3-4-5 vectors).
    bank_x = np.array([[2.0, 0.0], [4.0, 3.0], [3.0, 4.0], [-1.0, 0.0]])
    bank_y = np.array([0, 1, 1, 0])
    query = np.array([[1.0, 0.0]])
    # k=3, T=0.2: label 0 gets e^5 = 148.4, label 1 gets e^4 + e^3 = 74.7: label 0.
    # k=3, T=0.5: label 0 gets e^2 = 7.39, label 1 gets e^1.6 + e^1.2 = 8.27: label 1.
    # k=1: the nearest alone, label 0. k=4 adds e^(-1/T) (0.135 at T=0.5) to label 0: no change.
    pred = knn_predict(bank_x, bank_y, query, [1, 3, 4], [0.2, 0.5])
    assert {p: int(v[0]) for p, v in pred.items()} == {
        (1, 0.2): 0, (1, 0.5): 0, (3, 0.2): 0, (3, 0.5): 1, (4, 0.2): 0, (4, 0.5): 1,
    }
    # Scale does not matter (cosine), labels need not be 0..C-1, and an exact tie goes to the smaller label.
    tie = knn_predict(np.array([[0.0, 5.0], [0.0, -5.0]]), np.array([7, 3]), np.array([[1.0, 0.0]]), [2], [0.1])
    assert tie[2, 0.1].tolist() == [3]


def test_clustered_data_is_solved():
    x, y = _blobs(np.random.default_rng(2), 600, classes=5, dim=16, spread=0.5)
    result = knn_probe(*_split3(x, y, 300, 100))
    assert result["accuracy"] == pytest.approx(100.0) and result["val_accuracy"] == pytest.approx(100.0)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (300, 100, 200)
    assert {"accuracy", "val_accuracy", "k", "temperature"} <= set(result)
    assert len(result["sweep"]) == 5 * 4
    assert (result["k"], result["temperature"]) == (1, 0.02)  # everything ties at 100: smallest k, then T


def test_selection_picks_the_k_that_outvotes_label_noise():
    # Two tight direction clusters; in train a quarter of each cluster carries the other label,
    # scattered at random. 1-NN copies the noise (~75% on val); a large k votes it out (100%).
    rng = np.random.default_rng(3)

    def cluster_data(n, noise):
        y = rng.integers(0, 2, n)
        angle = np.where(y == 0, 0.0, np.pi / 2) + rng.normal(0, 0.05, n)
        x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        flip = rng.random(n) < noise
        return x, np.where(flip, 1 - y, y)

    tx, ty = cluster_data(400, 0.25)
    vx, vy = cluster_data(100, 0.0)
    sx, sy = cluster_data(100, 0.0)
    result = knn_probe(tx, ty, vx, vy, sx, sy, ks=(1, 50), temperatures=(1.0,))
    by_k = {s["k"]: s["val_accuracy"] for s in result["sweep"]}
    assert by_k[1] < 85.0 and by_k[50] == 100.0
    assert result["k"] == 50 and result["accuracy"] > 95.0


def test_k_is_clipped_to_the_train_set_and_probe_is_deterministic():
    x, y = _blobs(np.random.default_rng(4), 40, classes=2, dim=4, spread=3.0)
    args = _split3(x, y, 10, 10)
    first = knn_probe(*args, ks=(5, 10, 50, 100))
    assert [s["k"] for s in first["sweep"]] == [5] * 4 + [10] * 4  # 50 and 100 clipped to 10, merged
    assert first == knn_probe(*args, ks=(5, 10, 50, 100))
    with pytest.raises(ValueError, match="non-empty"):
        knn_probe(*args[:2], x[:0], y[:0], *args[4:])


def test_knn_protocol_through_evaluate_tasks(tmp_path, extraction_calls):
    out = tmp_path / "knn.json"
    tasks = [_task("one", "natural", 0), _task("two", "structured", 10)]
    calls = extraction_calls
    result = suite.evaluate_tasks(
        TinyCNN(), tasks, protocol="knn", image_size=8, out_json=out, model_name="tiny", progress=False
    )
    assert calls == [f"{t}/{s}" for t in ("one", "two") for s in ("train", "val", "test")]
    assert result["protocol"] == "knn" and [t["task"] for t in result["tasks"]] == ["one", "two"]
    for entry in result["tasks"]:
        assert {"task", "group", "protocol", "accuracy", "val_accuracy", "k", "temperature"} <= set(entry)
        assert entry["protocol"] == "knn" and 0.0 <= entry["accuracy"] <= 100.0
        assert entry["k"] <= 12  # the train split has 12 images
    one, two = (t["accuracy"] for t in result["tasks"])
    assert result["groups"] == {"natural": one, "structured": two}
    calls.clear()
    assert suite.evaluate_tasks(
        TinyCNN(), tasks, protocol="knn", image_size=8, out_json=out, model_name="tiny", progress=False
    ) == result
    assert calls == []
