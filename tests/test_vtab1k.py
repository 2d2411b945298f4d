"""VTAB-1k: the suite-wide selection and median-of-3 on a fake fine-tune, then the real path on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from vivi.data.tasks import ArraySplit, ImageTask
from vivi.errors import UserError
from vivi.evaluate import suite, vtab1k
from vivi.evaluate.finetune import FinetuneSetting, finetune, predict, preload, step_decay_lr
from vivi.evaluate.vtab1k import Trial, Vtab1kScale, run_vtab1k, select_setting

SCALE = Vtab1kScale(lrs=(0.1, 0.01), steps=(10, 40), batch_size=4, repetitions=3, n_train=4, n_val=2)
A, B, C, D = SCALE.settings()  # (0.1, 10), (0.1, 40), (0.01, 10), (0.01, 40)


def _task(name: str, group: str = "natural", n_train: int = 4, n_val: int = 2, classes: int = 2) -> ImageTask:
    def split(n: int) -> ArraySplit:
        return ArraySplit(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n) % classes)

    return ImageTask(name, group, [str(c) for c in range(classes)], split(n_train), split(n_val), split(5), "here/x")


# Val accuracies per task and setting: task "a" alone would pick A, task "b" alone D;
# the suite means are A 55, B 60, C 50, D 60 -> B and D tie, B comes first in sweep order.
VAL = {"a": {A: 90.0, B: 80.0, C: 60.0, D: 50.0}, "b": {A: 20.0, B: 40.0, C: 40.0, D: 70.0}}
# Test accuracy per task and seed for the final runs (any setting other than B would be a bug).
TEST = {"a": [50.0, 90.0, 60.0], "b": [10.0, 30.0, 20.0]}


class FakeTrials:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int]] = []

    def __call__(self, t: Trial) -> float:
        self.calls.append((t.task.name, t.phase, t.setting.key, t.seed))
        if t.phase == "sweep":
            return VAL[t.task.name][t.setting]
        assert t.setting == B, "final runs must use the suite-wide choice"
        return TEST[t.task.name][t.seed]


def test_selection_is_across_the_suite_with_ties_to_the_earlier_setting():
    sweep = {task: {s.key: acc for s, acc in per.items()} for task, per in VAL.items()}
    assert select_setting(sweep, SCALE.settings()) == B
    assert select_setting({"a": sweep["a"]}, SCALE.settings()) == A
    assert select_setting({"b": sweep["b"]}, SCALE.settings()) == D


def test_run_reports_the_median_of_three_with_the_chosen_setting():
    fake = FakeTrials()
    entries, state = run_vtab1k([_task("a"), _task("b", "structured")], fake, SCALE)
    assert [(e["task"], e["group"], e["accuracy"]) for e in entries] == [("a", "natural", 60.0), ("b", "structured", 20.0)]
    assert entries[0]["accuracies"] == [50.0, 90.0, 60.0]
    assert (entries[0]["lr"], entries[0]["steps"], entries[0]["val_accuracy"]) == (0.1, 40, 80.0)
    assert [s["val_accuracy"] for s in entries[1]["sweep"]] == [20.0, 40.0, 40.0, 70.0]
    sweeps = [c for c in fake.calls if c[1] == "sweep"]
    finals = [c for c in fake.calls if c[1] == "final"]
    assert len(sweeps) == 8 and {c[3] for c in sweeps} == {0}
    assert finals == [(t, "final", B.key, seed) for t in ("a", "b") for seed in range(3)]
    # every sweep run happens before any final run: the choice needs all tasks
    assert max(fake.calls.index(c) for c in sweeps) < min(fake.calls.index(c) for c in finals)


def test_resume_runs_only_what_is_missing():
    saved = []
    first = FakeTrials()

    def interrupt_after_sweep(state: dict) -> None:
        saved.append(json.loads(json.dumps(state)))
        if len(state["final"].get("a", [])) == 1:
            raise KeyboardInterrupt

    tasks = [_task("a"), _task("b")]
    with pytest.raises(KeyboardInterrupt):
        run_vtab1k(tasks, first, SCALE, save=interrupt_after_sweep)
    assert len(first.calls) == 9
    second = FakeTrials()
    entries, _ = run_vtab1k(tasks, second, SCALE, state=saved[-1])
    assert second.calls == [("a", "final", B.key, 1), ("a", "final", B.key, 2)] + [
        ("b", "final", B.key, s) for s in range(3)
    ]
    assert [e["accuracy"] for e in entries] == [60.0, 20.0]


def test_too_few_examples_is_a_clear_error():
    with pytest.raises(UserError, match=r"small \(here/x\): vtab1k needs at least 4 train and 2 val examples, found 3"):
        run_vtab1k([_task("a"), _task("small", n_train=3)], FakeTrials(), SCALE)


def test_step_decay_drops_tenfold_at_30_60_90_percent():
    s = FinetuneSetting(lr=0.1, steps=100)
    lrs = [step_decay_lr(s, i) for i in range(100)]
    assert lrs[29] == 0.1 and lrs[30] == pytest.approx(0.01) and lrs[59] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001) and lrs[89] == pytest.approx(0.001) and lrs[90] == pytest.approx(1e-4)
    assert s.key == "lr=0.1,steps=100"


class TinyNet(nn.Module):
    """A CNN small enough to fine-tune in milliseconds; BatchNorm like the real backbones."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def _colour_task(name: str, n: int, seed: int) -> ImageTask:
    """Two classes: reddish vs bluish noisy 6x6 images (solvable by any working fine-tune)."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> ArraySplit:
        y = np.arange(count) % 2
        x = rng.integers(0, 80, (count, 6, 6, 3))
        x[y == 0, ..., 0] += 170
        x[y == 1, ..., 2] += 170
        return ArraySplit(x.astype(np.uint8), y)

    return ImageTask(name, "natural", ["red", "blue"], split(n), split(n // 2), split(n))


def test_finetune_learns_and_leaves_the_backbone_alone(one_thread):
    torch.manual_seed(0)
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    task = _colour_task("colours", 32, 0)
    x = preload(task.train, 8)
    assert x.shape == (32, 3, 8, 8) and x.dtype == torch.uint8
    clf = finetune(net, x, task.train.labels, 2, FinetuneSetting(0.1, 30), batch_size=8, seed=0)
    acc = 100 * np.mean(predict(clf, preload(task.test, 8)) == task.test.labels)
    assert acc >= 90.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = finetune(net, x, task.train.labels, 2, FinetuneSetting(0.1, 30), batch_size=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))


def test_vtab1k_suite_end_to_end_and_resume(tmp_path, monkeypatch, one_thread):
    scale = Vtab1kScale(lrs=(0.1, 0.01), steps=(3, 6), batch_size=8, repetitions=3, n_train=16, n_val=8)
    monkeypatch.setitem(vtab1k.VTAB1K_SCALES, "test", scale)
    tasks = [_colour_task("c1", 16, 1), _colour_task("c2", 16, 2)]
    out = tmp_path / "r.json"
    torch.manual_seed(0)
    net = TinyNet()
    results = suite.evaluate_tasks(net, tasks, "vtab1k", image_size=8, out_json=out, progress=False,
                                   scale="test")  # fmt: skip
    assert results["protocol"] == "vtab1k" and results["suite"] == ["c1", "c2"]
    for e in results["tasks"]:
        assert len(e["accuracies"]) == 3 and e["accuracy"] == sorted(e["accuracies"])[1]
        assert len(e["sweep"]) == 4 and 0.0 <= e["accuracy"] <= 100.0
    assert results["mean"] == pytest.approx(np.mean([e["accuracy"] for e in results["tasks"]]))
    saved = json.loads(out.read_text())
    assert saved["tasks"] == results["tasks"]

    calls = []
    monkeypatch.setattr(vtab1k.FinetuneTrials, "__call__", lambda self, t: calls.append(t) or 0.0)
    again = suite.evaluate_tasks(net, tasks, "vtab1k", image_size=8, out_json=out, progress=False, scale="test")
    assert calls == [] and again["tasks"] == results["tasks"]
    with pytest.raises(UserError, match="suite="):
        suite.evaluate_tasks(net, tasks[:1], "vtab1k", image_size=8, out_json=out, progress=False, scale="test")
    with pytest.raises(UserError, match="other weights"):  # another model given the same name
        suite.evaluate_tasks(TinyNet(), tasks, "vtab1k", image_size=8, out_json=out, progress=False, scale="test")
    changed = [_colour_task("c1", 16, 1), _colour_task("c2", 16, 5)]
    with pytest.raises(UserError, match="images of c2 changed"):
        suite.evaluate_tasks(net, changed, "vtab1k", image_size=8, out_json=out, progress=False, scale="test")


def test_finetune_protocol_uses_the_given_setting(monkeypatch, one_thread):
    scale = Vtab1kScale(lrs=(0.1,), steps=(5,), batch_size=8, n_train=16, n_val=8)
    monkeypatch.setitem(vtab1k.VTAB1K_SCALES, "test", scale)
    results = suite.evaluate_tasks(TinyNet(), [_colour_task("c", 16, 3)], "finetune", image_size=8, progress=False,
                                   scale="test", setting=FinetuneSetting(0.05, 4))  # fmt: skip
    (entry,) = results["tasks"]
    assert (entry["lr"], entry["steps"], entry["n_train"], results["lr"]) == (0.05, 4, 24, 0.05)


def test_finetune_protocol_uses_a_small_image_folder_whole_and_skips_broken_files(tmp_path, capsys, one_thread):
    """A user's folder smaller than VTAB-1k's 800 + 200 is fine-tuned on whole (vtab1k, which compares
    a sweep across tasks, still refuses it); broken files are left out and named."""
    from PIL import Image

    from vivi.data.tasks import load_tasks
    from vivi.evaluate.suite import evaluate_tasks

    root = tmp_path / "d"
    for split, n in (("train", 5), ("test", 2)):
        for c, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), colour).save(root / split / str(c) / f"{i}.png")
    (root / "train" / "1" / "0.png").write_bytes(b"")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    result = evaluate_tasks(model, load_tasks(f"imagefolder:{root}"), protocol="finetune", image_size=8,
                            setting=FinetuneSetting(0.01, 2), progress=False)  # fmt: skip
    (entry,) = result["tasks"]
    assert (entry["n_train"], entry["n_test"]) == (9, 4)
    assert entry["skipped_images"] == [f"{root / 'train/1/0.png'} (empty file (0 bytes))"]
    assert "fine-tuning on all 7 train + 2 val images" in capsys.readouterr().err  # the 7 readable ones
