"""Honest numbers: no hyper-parameter, statistic or early stop is chosen on test data, the splits
are disjoint, every test example is counted, and seeds reproduce (and differ) as they claim.

Each test checks the evaluation code against an independent computation on a hand-built tiny
problem where a leak would change the number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from vivi.data.tasks import ArraySplit, ImageTask, load_tasks
from vivi.errors import UserError
from vivi.evaluate import finetune as finetune_mod
from vivi.evaluate import linear, vtab1k
from vivi.evaluate.features import extract_features
from vivi.evaluate.finetune import FinetuneSetting, finetune, predict, preload
from vivi.evaluate.knn import knn_predict, knn_probe
from vivi.evaluate.suite import summarize
from vivi.evaluate.vtab1k import FinetuneTrials, Trial, Vtab1kScale, run_vtab1k


def _blobs(n: int, d: int, classes: int, seed: int, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(classes, d))
    y = np.arange(n) % classes
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


# ---- linear probe


def _reference_linear(tr, ytr, va, yva, te, yte, cs):
    """The protocol written out plainly: cold fits per C on standardised train, best val (smallest C
    on ties), refit on train + val, score test once."""
    scaler = StandardScaler().fit(tr)
    val_acc = []
    for c in cs:
        m = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(tr), ytr)
        val_acc.append(100.0 * np.mean(m.predict(scaler.transform(va)) == yva))
    best = cs[int(np.argmax(val_acc))]
    both, yboth = np.concatenate([tr, va]), np.concatenate([ytr, yva])
    s2 = StandardScaler().fit(both)
    final = LogisticRegression(C=best, max_iter=5000).fit(s2.transform(both), yboth)
    return best, val_acc, 100.0 * np.mean(final.predict(s2.transform(te)) == yte)


def test_linear_probe_matches_a_plain_reference_and_test_cannot_move_the_choice():
    tr, ytr = _blobs(60, 5, 3, seed=1)
    va, yva = _blobs(30, 5, 3, seed=2)
    te, yte = _blobs(45, 5, 3, seed=3)
    cs = (1e-3, 1e-2, 1e-1, 1.0)
    out = linear.linear_probe(tr, ytr, va, yva, te, yte, Cs=cs)
    best, val_acc, test_acc = _reference_linear(tr, ytr, va, yva, te, yte, cs)
    assert out["C"] == best
    assert [s["val_accuracy"] for s in out["sweep"]] == pytest.approx(val_acc)
    assert out["accuracy"] == pytest.approx(test_acc)
    assert out["n_test"] == 45  # every test example is counted
    # test data that would favour another C (here: features scaled, labels shuffled) changes nothing but accuracy
    rng = np.random.default_rng(0)
    other = linear.linear_probe(tr, ytr, va, yva, 100 * te + 7, rng.permutation(yte), Cs=cs)
    assert other["C"] == out["C"] and other["sweep"] == out["sweep"] and other["val_accuracy"] == out["val_accuracy"]


def test_linear_probe_fits_scalers_and_models_on_train_or_train_plus_val_only(monkeypatch):
    """Every fit (scaler or regression) sees 50 (train) or 50 + 23 (train + val) rows, never test's 37."""
    seen = []
    real_scaler_fit, real_lr_fit = StandardScaler.fit, LogisticRegression.fit

    def scaler_fit(self, x, *a, **k):
        seen.append(len(x))
        return real_scaler_fit(self, x, *a, **k)

    def lr_fit(self, x, y, *a, **k):
        seen.append(len(x))
        return real_lr_fit(self, x, y, *a, **k)

    monkeypatch.setattr(StandardScaler, "fit", scaler_fit)
    monkeypatch.setattr(LogisticRegression, "fit", lr_fit)
    tr, ytr = _blobs(50, 4, 2, seed=1)
    va, yva = _blobs(23, 4, 2, seed=2)
    te, yte = _blobs(37, 4, 2, seed=3)
    linear.linear_probe(tr, ytr, va, yva, te, yte, Cs=(0.1, 1.0))
    linear.fit_linear_classifier(tr, ytr, va, yva, Cs=(0.1, 1.0))
    assert seen and set(seen) <= {50, 73}


# ---- kNN


def _reference_knn(bank, bank_y, queries, k, t):
    """One query at a time: cosine similarities, top k, weight exp(sim / T), smallest label on ties."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for q in queries:
        sims = b @ (q / np.linalg.norm(q))
        top = np.argsort(-sims, kind="stable")[:k]
        votes = {}
        for i in top:
            votes[bank_y[i]] = votes.get(bank_y[i], 0.0) + np.exp(sims[i] / t)
        best = max(votes.values())
        out.append(min(c for c, v in votes.items() if np.isclose(v, best, rtol=1e-9) or v == best))
    return np.array(out)


def test_knn_sweep_bank_excludes_val_and_final_bank_is_train_plus_val_only():
    """Random labels: if val sat in its own bank, k=1 would score 100% on val. The test accuracy must
    equal a slow reference run on the train + val bank with the chosen (k, T)."""
    rng = np.random.default_rng(0)
    tr, va, te = (rng.normal(size=(n, 8)).astype(np.float32) for n in (80, 40, 50))
    ytr, yva, yte = (rng.integers(0, 4, n) for n in (80, 40, 50))
    out = knn_probe(tr, ytr, va, yva, te, yte, ks=(1, 5), temperatures=(0.1, 1.0))
    k1 = [s["val_accuracy"] for s in out["sweep"] if s["k"] == 1]
    assert max(k1) < 60  # chance is 25%; a self-match would give 100%
    ref = _reference_knn(np.concatenate([tr, va]), np.concatenate([ytr, yva]), te, out["k"], out["temperature"])
    assert out["accuracy"] == pytest.approx(100.0 * np.mean(ref == yte))
    assert out["n_test"] == 50
    # the test split cannot move the choice
    other = knn_probe(tr, ytr, va, yva, -te, rng.permutation(yte), ks=(1, 5), temperatures=(0.1, 1.0))
    assert (other["k"], other["temperature"], other["sweep"]) == (out["k"], out["temperature"], out["sweep"])


def test_knn_predictions_cover_every_query_with_a_ragged_last_chunk():
    rng = np.random.default_rng(1)
    bank, bank_y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    q = rng.normal(size=(23, 6))
    pred = knn_predict(bank, bank_y, q, [5], [0.5], chunk_size=4)[5, 0.5]
    assert len(pred) == 23
    np.testing.assert_array_equal(pred, _reference_knn(bank, bank_y, q, 5, 0.5))


# ---- features: eval mode, every image, no augmentation


class BNDropNet(nn.Module):
    """BatchNorm + Dropout: batch statistics or dropout at extraction would make an image's
    feature depend on its batch-mates or on chance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))


def _array_split(n: int, seed: int, size: int = 8) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), np.arange(n) % 2)


def test_features_are_extracted_in_eval_mode_for_every_image_and_leave_the_model_untouched():
    torch.manual_seed(0)
    net = BNDropNet().train()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    split = _array_split(10, seed=0)
    a = extract_features(net, split, 8, batch_size=4, progress=False)  # batches of 4, 4, 2
    b = extract_features(net, split, 8, batch_size=10, progress=False)
    assert a.shape[0] == 10
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # independent of batch-mates and of chance
    singles = np.concatenate([extract_features(net, split.subset([i]), 8, batch_size=1, progress=False)
                              for i in range(10)])  # fmt: skip
    np.testing.assert_allclose(a, singles, rtol=1e-5, atol=1e-6)
    assert net.training  # mode restored
    for k, v in net.state_dict().items():  # BatchNorm statistics not updated by the evaluated images
        assert torch.equal(v, before[k]), k


def test_finetune_predict_counts_every_test_image_in_eval_mode(monkeypatch):
    monkeypatch.setattr(finetune_mod, "EVAL_BATCH", 4)
    torch.manual_seed(0)
    net = nn.Sequential(BNDropNet(), nn.Linear(6, 3)).train()
    images = preload(_array_split(10, seed=1), 8)
    batched = predict(net, images)
    assert len(batched) == 10
    singles = np.concatenate([predict(net, images[i : i + 1]) for i in range(10)])
    np.testing.assert_array_equal(batched, singles)


# ---- VTAB-1k: sweep on 800/200, choose across the suite, retrain on 1000, test once


def _id_task(name: str, n_train: int, n_val: int, n_test: int, offset: int) -> ImageTask:
    """Image i of the task is filled with the id ``offset + i`` in its first pixel, so a consumer's
    images tell exactly which examples it was given."""

    def split(start: int, n: int) -> ArraySplit:
        x = np.zeros((n, 4, 4, 3), np.uint8)
        ids = np.arange(start, start + n)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = ids % 256, ids // 256
        return ArraySplit(x, ids % 2)

    return ImageTask(name, "natural", ["a", "b"], split(offset, n_train), split(offset + 1000, n_val),
                     split(offset + 2000, n_test))  # fmt: skip


def _ids(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist())


def test_vtab1k_trials_fit_on_800_then_1000_and_score_val_then_every_test_image(monkeypatch):
    calls = []
    monkeypatch.setattr(vtab1k, "finetune", lambda backbone, x, y, *a, **k: ("model", _ids(x), len(x)))
    monkeypatch.setattr(vtab1k, "predict", lambda model, x, device: calls.append((model, _ids(x), len(x)))
                        or np.zeros(len(x), np.int64))  # fmt: skip
    scale = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=8, n_val=4)
    task = _id_task("t", n_train=12, n_val=6, n_test=9, offset=0)  # larger than 8 / 4: the first are taken
    trials = FinetuneTrials(nn.Identity(), 4, scale)
    setting = scale.settings()[0]
    trials(Trial(task, setting, "sweep", seed=0))
    trials(Trial(task, setting, "final", seed=0))
    (sweep_model, sweep_eval, n_sweep_eval), (final_model, test_eval, n_test_eval) = calls
    train800, val200, test = set(range(8)), set(range(1000, 1004)), set(range(2000, 2009))
    assert sweep_model[1] == train800 and sweep_eval == val200 and n_sweep_eval == 4
    assert final_model[1] == train800 | val200 and final_model[2] == 12  # all 1000, each once
    assert test_eval == test and n_test_eval == 9  # every test image, none seen in any fit
    assert not (sweep_model[1] | final_model[1]) & test


def test_vtab1k_chooses_on_mean_val_before_any_test_run_and_reports_the_median():
    """A trial function where test would favour the other setting: the choice must follow val,
    every final run must come after every sweep run, and all tasks use the one chosen setting."""
    scale = Vtab1kScale(lrs=(0.1, 0.01), steps=(1,), batch_size=4, repetitions=3, n_train=2, n_val=2)
    tasks = [_id_task(n, 2, 2, 2, 0) for n in ("t1", "t2")]
    val = {("t1", "lr=0.1,steps=1"): 90.0, ("t1", "lr=0.01,steps=1"): 50.0,  # mean 70 vs 60: lr=0.1 wins
           ("t2", "lr=0.1,steps=1"): 50.0, ("t2", "lr=0.01,steps=1"): 70.0}  # fmt: skip
    log = []

    def trial(t: Trial) -> float:
        log.append((t.phase, t.task.name, t.setting.key, t.seed))
        if t.phase == "sweep":
            return val[t.task.name, t.setting.key]
        return {0: 10.0, 1: 30.0, 2: 20.0}[t.seed] + (50 if t.setting.lr == 0.01 else 0)

    entries, _ = run_vtab1k(tasks, trial, scale)
    phases = [p for p, *_ in log]
    assert phases == ["sweep"] * 4 + ["final"] * 6
    finals = [(name, key, seed) for p, name, key, seed in log if p == "final"]
    assert {key for _, key, _ in finals} == {"lr=0.1,steps=1"}
    assert sorted((n, s) for n, _, s in finals) == [(n, s) for n in ("t1", "t2") for s in (0, 1, 2)]
    assert [e["accuracy"] for e in entries] == [20.0, 20.0]  # median of 10, 30, 20


def test_vtab1k_trials_do_not_reuse_another_task_s_images_under_the_same_name(monkeypatch):
    """The preloaded images were cached by task name: a second task named alike (two folders both
    called ``pets``) was fine-tuned and tested on the first one's images."""
    monkeypatch.setattr(vtab1k, "finetune", lambda backbone, x, y, *a, **k: None)
    monkeypatch.setattr(vtab1k, "predict", lambda model, x, device: np.zeros(len(x), np.int64))
    scale = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=2, n_val=2)
    trials = FinetuneTrials(nn.Identity(), 4, scale)
    first, second = _id_task("pets", 2, 2, 3, 0), _id_task("pets", 2, 2, 3, 100)
    assert _ids(trials.data(first)[4]) == {2000, 2001, 2002}
    assert _ids(trials.data(second)[4]) == {2100, 2101, 2102}


# ---- seeds


def test_finetune_is_reproducible_per_seed_and_seeds_differ(one_thread):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())  # fmt: skip
    split = _array_split(16, seed=3)
    images, labels = preload(split, 8), split.labels
    setting = FinetuneSetting(0.05, 6)

    def weights(seed: int) -> torch.Tensor:
        model = finetune(backbone, images, labels, 2, setting, batch_size=4, seed=seed)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(weights(0), weights(0))  # same command twice: the same numbers
    assert not torch.equal(weights(0), weights(1))  # another seed: other batches, other weights


# ---- the suite's mean


def test_suite_mean_is_over_tasks_not_over_groups():
    entries = [{"group": "natural", "accuracy": a} for a in (10.0, 20.0, 30.0)] + [
        {"group": "structured", "accuracy": 100.0}
    ]
    groups, mean = summarize(entries)
    assert groups == {"natural": 20.0, "structured": 100.0}
    assert mean == pytest.approx(40.0)  # (10 + 20 + 30 + 100) / 4, as VTAB averages; groups would give 60


# ---- image folders: the same file reached from two splits


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


def _folder(root: Path, splits=("train", "test")) -> Path:
    for split in splits:
        for c, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
            for i in range(3):
                _png(root / split / c / f"{split}{i}.png", colour)
    return root


@pytest.mark.parametrize("shared", ["test", "val"])
def test_an_image_folder_whose_splits_share_a_file_is_refused(tmp_path, shared):
    root = _folder(tmp_path / "d", ("train", "val", "test"))
    os.symlink(root / "train" / "a" / "train0.png", root / shared / "a" / "linked.png")
    try:
        load_tasks(f"imagefolder:{root}")
    except UserError as e:
        assert "linked.png" in str(e)
        return
    raise AssertionError(f"a {shared}/ image that is a train/ file was accepted")


def test_the_curation_probe_classifies_in_eval_mode_whatever_mode_the_encoder_is_in(tmp_path, monkeypatch):
    """probe_classifier ran the encoder in the mode it found it in: one left in train mode would
    use each batch's BatchNorm statistics (and dropout), so an image's class depended on the
    other images of its batch, and the statistics drifted with every image classified."""
    from vivi.evaluate import classifier
    from vivi.evaluate.encoders import Encoder

    torch.manual_seed(0)
    net = BNDropNet().train()
    monkeypatch.setattr(classifier, "load_encoder", lambda spec: Encoder("bn", net, 8))
    root = _folder(tmp_path / "d", ("train",))
    clf = classifier.probe_classifier("bn", f"imagefolder:{root}")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = preload(_array_split(6, seed=5), 8)
    batched = clf.probabilities(images)
    singles = np.concatenate([clf.probabilities(images[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_vtab1k_accepts_classes_absent_from_train800_but_not_classes_lost_to_broken_files(tmp_path):
    """sun397 has 397 classes and train800 misses ~50 of them: that is VTAB-1k, and the suite
    stopped there with "no readable training image left" though nothing was unreadable. A class
    that train800 holds but whose every image fails to decode is still refused."""
    def split(y):
        return ArraySplit(np.zeros((len(y), 4, 4, 3), np.uint8), np.array(y))

    scale = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=4, n_val=2)
    task = ImageTask("t", "natural", ["a", "b", "c"], split([0, 1, 0, 1, 2, 2]), split([0, 1]), split([0, 1, 2]))
    _, train_y, *_ = FinetuneTrials(nn.Identity(), 4, scale).data(task)
    assert sorted(set(train_y.tolist())) == [0, 1]  # class c has no example in the first 4, as in VTAB-1k

    root = _folder(tmp_path / "d", ("train", "val", "test"))
    for f in (root / "train" / "b").iterdir():
        f.write_bytes(b"not an image")
    (broken,) = load_tasks(f"imagefolder:{root}")
    scale = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=1, n_train=6, n_val=2)
    with pytest.raises(UserError, match="class b"):
        FinetuneTrials(nn.Identity(), 4, scale).data(broken)


def test_vtab1k_resume_does_not_relabel_finals_of_another_chosen_setting():
    """Final runs were stored per task without their setting: when a resumed sweep chose another
    setting (a scale's sweep changed between versions), the old setting's test accuracies were
    reported under the new lr / steps."""
    tasks = [_id_task("t1", 2, 2, 2, 0)]
    old = Vtab1kScale(lrs=(0.1,), steps=(1,), batch_size=4, repetitions=2, n_train=2, n_val=2)
    new = Vtab1kScale(lrs=(0.1, 0.01), steps=(1,), batch_size=4, repetitions=2, n_train=2, n_val=2)
    val = {"lr=0.1,steps=1": 50.0, "lr=0.01,steps=1": 80.0}

    def trial(t: Trial) -> float:
        return val[t.setting.key] if t.phase == "sweep" else {0.1: 11.0, 0.01: 77.0}[t.setting.lr]

    _, state = run_vtab1k(tasks, trial, old)
    (entry,), state = run_vtab1k(tasks, trial, new, state=state)
    assert entry["lr"] == 0.01 and entry["accuracies"] == [77.0, 77.0]
    (again,), _ = run_vtab1k(tasks, lambda t: pytest.fail("nothing left to run"), new, state=state)
    assert again["accuracies"] == [77.0, 77.0]  # an unchanged choice still resumes


def test_a_val_held_out_of_train_takes_every_path_to_its_files(tmp_path):
    """train/ reaching one file by two paths (file links) put it on both sides of the held-out val
    when the draw split them; every path to a held-out file is held out now, none dropped."""
    from vivi.data.files import file_id

    root = tmp_path / "d"
    for c, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        for i in range(10):
            _png(root / "train" / c / f"{i}.png", colour)
            os.symlink(root / "train" / c / f"{i}.png", root / "train" / c / f"link{i}.png")
        _png(root / "test" / c / "t.png", colour)
    (task,) = load_tasks(f"imagefolder:{root}")
    train_ids = {file_id(p) for p in task.train.paths}
    val_ids = {file_id(p) for p in task.val.paths}
    assert len(task.train) + len(task.val) == 40 and len(task.val) >= 2
    assert not train_ids & val_ids, "a file on both sides of the held-out val"


def test_accuracy_is_written_as_the_fraction_it_is():
    """``100 * mean`` wrote 13.100000000000001 for 131 of 1000 into results files."""
    from vivi.evaluate.metrics import accuracy

    labels = np.zeros(1000, dtype=np.int64)
    predicted = np.where(np.arange(1000) < 131, 0, 1)
    assert repr(accuracy(predicted, labels)) == "13.1"
    assert all(accuracy(np.arange(n) < hits, np.ones(n, bool)) == 100 * hits / n for n in (3, 7, 200) for hits in range(n))
    assert np.isnan(accuracy(np.array([]), np.array([])))
