"""Report: the comparison table and the bar plot from evaluation results."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vivi.errors import UserError
from vivi.evaluate.report import bar_plot, load_results, results_table, write_report


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
    # natural (80 + 61) / 2 = 70.5; structured 30; mean (30 + 80 + 61 + 70) / 4 = 60.25
    assert ex == ["Ex-YT-F", "80.0", "61.0", "70.0", "30.0", "-", "70.5", "70.0", "30.0", "60.2"]
    vivi = [c.strip() for c in lines[5].strip("|").split("|")]
    # structured (45 + 50) / 2 = 47.5; mean (90 + 45 + 50) / 3 = 61.67
    assert vivi == ["VIVI-Ex(4)", "90.0", "-", "-", "45.0", "50.0", "90.0", "-", "47.5", "61.7"]
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
    assert load_results([good]) == [RESULTS[0]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": [{"task": "x"}]}))
    with pytest.raises(UserError, match="bad.json: not a vivi results file"):
        load_results([good, bad])
