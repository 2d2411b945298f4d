"""A results file is replaced whole or not at all: a write killed midway leaves the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vivi.atomic import write_json_atomic


def test_a_write_that_dies_midway_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"tasks": [1, 2]})

    def half_then_die(self: Path, text: str, *args, **kwargs) -> int:
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"tasks": [1, 2, 3]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"tasks": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no half file left beside it
    write_json_atomic(path, {"tasks": [1, 2, 3]})
    assert json.loads(path.read_text()) == {"tasks": [1, 2, 3]}


def test_the_parent_folder_is_made_and_numpy_floats_are_written_as_numbers(tmp_path):
    import numpy as np

    path = tmp_path / "a" / "b.json"
    write_json_atomic(path, {"x": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"x": 0.5}
