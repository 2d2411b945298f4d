"""Report: the comparison table and the bar plot from evaluation results."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vivi.errors import UserError
from vivi.evaluate.report import (
    bar_plot,
    curves_plot,
    find_pair,
    load_metrics,
    load_results,
    results_table,
    task_differences,
    write_report,
)


def _result(model: str, accs: dict[tuple[str, str], float]) -> dict:
    tasks = [{"task": t, "group": g, "protocol": "linear", "accuracy": a} for (g, t), a in accs.items()]
    return {"model": model, "protocol": "linear", "tasks": tasks}


RESULTS = [
    _result(
        "Ex-YT-F",
        {
            ("structured", "count"): 30.0,
            ("natural", "objects"): 80.0,
            ("natural", "textures"): 61.0,
            ("specialized", "scan"): 70.0,
        },
    ),
    _result("VIVI-Ex(4)", {("natural", "objects"): 90.0, ("structured", "count"): 45.0, ("structured", "depth"): 50.0}),
]


def test_table_groups_columns_and_means():
    table = results_table(RESULTS)
    lines = table.splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["model", "objects", "textures", "scan", "count", "depth", "natural mean",
                      "specialized mean", "structured mean", "mean"]  # fmt: skip
    ex = [c.strip() for c in lines[4].strip("|").split("|")]
    # natural (80 + 61) / 2 = 70.5; structured 30; mean (30 + 80 + 61 + 70) / 4 = 60.25; a mean that
    # misses a task of the table (depth) is marked: it is not comparable with a complete row's
    assert ex == ["Ex-YT-F", "80.0", "61.0", "70.0", "30.0", "-", "70.5", "70.0", "30.0*", "60.2*"]
    vivi = [c.strip() for c in lines[5].strip("|").split("|")]
    # structured (45 + 50) / 2 = 47.5; mean (90 + 45 + 50) / 3 = 61.67
    assert vivi == ["VIVI-Ex(4)", "90.0", "-", "-", "45.0", "50.0", "90.0*", "-", "47.5", "61.7*"]
    assert len({len(line) for line in lines[2:]}) == 1  # fixed width
    assert "natural: objects, textures; specialized: scan; structured: count, depth" in lines[0]


def test_plot_and_report_files(tmp_path):
    png = bar_plot(RESULTS, tmp_path / "plots" / "acc.png")
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG" and img.width > 400 and img.height > 300
    md, png = write_report(RESULTS, tmp_path / "report")
    assert png.exists() and md.read_text().count("60.2") == 1 and f"]({png.name})" in md.read_text()


def test_load_results(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(RESULTS[0]))
    assert load_results([good]) == [{**RESULTS[0], "results_file": str(good)}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": [{"task": "x"}]}))
    with pytest.raises(UserError, match="bad.json: not a vivi results file"):
        load_results([good, bad])


@pytest.mark.parametrize(
    "data, reason",
    [
        ({"model": 5, "tasks": [{"task": 3, "group": [1], "accuracy": 50}]}, "field model is 5, expected a string"),
        ({"tasks": [{"task": "a", "group": [1], "accuracy": 50}]}, "field tasks[0].group is [1], expected a string"),
        ({"tasks": [{"task": "a", "group": "g", "accuracy": "50"}]}, 'field tasks[0].accuracy is "50", expected a number'),
        ({"tasks": [{"task": "a", "group": "g", "accuracy": True}]}, "field tasks[0].accuracy is true, expected a number"),
        ({"image_size": "64", "tasks": []}, 'field image_size is "64", expected an integer'),
        ({"tasks": [{"task": "a", "group": "g", "accuracy": 1, "severity_mean": [1, None]}]},
         "field tasks[0].severity_mean[1] is null, expected a number"),
        ({"tasks": {"task": "a"}}, "tasks need task, group and accuracy"),
    ],
)
def test_results_with_fields_of_the_wrong_type_are_refused_naming_the_field(tmp_path, data, reason):
    """A hand-edited file used to end in "unhashable type: 'list'" inside the table code."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as info:
        load_results([path])
    assert str(info.value) == f"{path}: not a vivi results file ({reason})"


def test_differences_are_per_shared_task_with_group_means():
    rows = task_differences(RESULTS, 0, 1)
    # shared tasks: objects (90 - 80) and count (45 - 30); textures, scan, depth are not shared
    assert rows == [("objects", "natural", 10.0), ("count", "structured", 15.0), ("natural mean", "natural", 10.0),
                    ("structured mean", "structured", 15.0), ("mean", "", 12.5)]  # fmt: skip
    with pytest.raises(UserError, match="share no task"):
        task_differences([RESULTS[0], _result("other", {("natural", "zzz"): 1.0})], 0, 1)


def _metrics(run, losses):
    run.mkdir(parents=True)
    rows = [{"loss": v, "loss_sf": v / 2, "step": 10 * (i + 1), "lr": 0.1} for i, v in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_report_with_differences_and_training_curves(tmp_path):
    run_a = _metrics(tmp_path / "runs" / "a", [3.0, 2.0, 1.5])
    run_b = _metrics(tmp_path / "runs" / "b", [2.5, 1.0])
    results = [{**RESULTS[0], "model_source": str(run_a)}, {**RESULTS[1], "model_source": str(run_b)}]
    md, _ = write_report(results, tmp_path / "report")
    text = md.read_text()
    files = sorted(p.name for p in md.parent.glob("*.png"))
    assert files == ["accuracy.png", "curves.png", "diff-vivi-ex-4-vs-ex-yt-f.png"]
    for name in files:
        assert f"]({name})" in text
        with Image.open(md.parent / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    assert "VIVI-Ex(4) minus Ex-YT-F" in text and str(run_a) in text
    assert find_pair(results, ["VIVI-Ex(4)", "Ex-YT-F"]) == (1, 0)
    with pytest.raises(UserError, match=r"--diff nope: no such model \(available: Ex-YT-F, VIVI-Ex\(4\)\)"):
        find_pair(results, ["nope", "Ex-YT-F"])
    assert [r["loss"] for r in load_metrics(run_b)] == [2.5, 1.0]
    (run_b / "metrics.jsonl").write_text("{broken\n")
    with pytest.raises(UserError, match="metrics.jsonl: not a run's metrics.jsonl"):
        curves_plot([run_a, run_b], tmp_path / "c.png")


def test_results_of_one_model_in_several_files_are_one_row(tmp_path):
    """A model evaluated on mini-vtab and on an image folder separately is one row, not two
    rows of dashes (and no difference plot of the model against itself)."""
    paths = []
    for name, accs in [("a", {("natural", "objects"): 80.0}), ("b", {("custom", "mine"): 60.0})]:
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_result("Ex-YT-F", accs)))
    (row,) = load_results(paths)
    assert [t["task"] for t in row["tasks"]] == ["objects", "mine"] and row["mean"] == 70.0
    md, _ = write_report(load_results(paths), tmp_path / "report")
    assert "| Ex-YT-F | 80.0 | 60.0 |" in md.read_text().replace("  ", " ").replace("  ", " ")


def test_default_differences_skip_models_without_a_shared_task(tmp_path):
    results = [RESULTS[0], _result("other", {("custom", "mine"): 50.0})]
    md, _ = write_report(results, tmp_path / "report")
    assert "No difference plot for other: no task in common with Ex-YT-F." in md.read_text()
    with pytest.raises(UserError, match="share no task"):  # asked for explicitly: an error
        write_report(results, tmp_path / "report", pairs=[(0, 1)])


def test_rows_of_one_name_are_told_apart_and_diff_refuses_to_guess(tmp_path, capsys):
    """Two weights files of one architecture, or one model evaluated twice, were two rows labelled
    alike, and --diff took the first of them without a word."""
    from vivi.cli import main

    paths = []
    for folder, acc in (("a", 50.0), ("b", 70.0)):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "results.json")
        paths[-1].write_text(json.dumps({**_result("resnet18", {("natural", "objects"): acc}), "weights": folder * 4}))
    results = load_results(paths)
    rows = [line.split("|")[1].strip() for line in results_table(results).splitlines()[4:]]
    assert rows == ["resnet18 [a/results.json]", "resnet18 [b/results.json]"]
    assert find_pair(results, ["resnet18 [b/results.json]", "resnet18 [a/results.json]"]) == (1, 0)
    with pytest.raises(UserError) as info:
        find_pair(results, ["resnet18", "resnet18 [a/results.json]"])
    assert str(info.value) == ("--diff resnet18: names 2 rows; give one of their labels: 'resnet18 [a/results.json]', "
                               "'resnet18 [b/results.json]'")  # fmt: skip
    capsys.readouterr()
    assert main(["report", *map(str, paths), "-o", str(tmp_path / "r"), "--diff", "resnet18", "Ex-YT-F"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    repeat = [RESULTS[0], RESULTS[0]]  # no file to tell them apart: numbered
    rows = [line.split("|")[1].strip() for line in results_table(repeat).splitlines()[4:]]
    assert rows == ["Ex-YT-F #1", "Ex-YT-F #2"]


def test_a_nan_accuracy_reads_nan_not_as_not_evaluated():
    """A NaN accuracy (a diverged model) was shown as "-", which the caption explains as "not evaluated"."""
    results = [RESULTS[1], _result("diverged", {("natural", "objects"): float("nan"), ("structured", "count"): 40.0})]
    table = results_table(results)
    row = [c.strip() for c in table.splitlines()[5].strip("|").split("|")]
    assert row == ["diverged", "nan", "40.0", "-", "nan", "40.0*", "nan"]  # depth not evaluated: "-"
    assert "nan: evaluated, but the accuracy is not a number" in table.splitlines()[0]
    assert "nan" not in results_table(RESULTS)


def test_curves_are_found_from_a_backbone_file_or_a_checkpoint_and_drawn_for_one_row(tmp_path, monkeypatch):
    """Results of RUN/backbone.safetensors or RUN/checkpoints/step_N.pt got no curves, and a run shorter
    than log_every (one row) drew an empty panel."""
    from matplotlib.axes import Axes

    run_a = _metrics(tmp_path / "runs" / "a", [3.0])
    run_b = _metrics(tmp_path / "runs" / "b", [2.5, 1.0])
    results = [{**RESULTS[0], "model_source": str(run_a / "backbone.safetensors")},
               {**RESULTS[1], "model_source": str(run_b / "checkpoints" / "step_00000020.pt")}]  # fmt: skip
    markers = []
    real_plot = Axes.plot

    def plot(self, *args, **kwargs):
        markers.append((len(args[0]), kwargs.get("marker")))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    md, _ = write_report(results, tmp_path / "report")
    assert (md.parent / "curves.png").is_file() and f"{run_a}, {run_b}" in md.read_text()
    assert (1, "o") in markers and (2, None) in markers
