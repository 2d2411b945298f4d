"""A results file is replaced whole or not at all: a write killed midway leaves the old one; processes
that add to one file take turns."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from vivi.atomic import file_lock, write_json_atomic


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


def _add_ones(path: Path, times: int) -> None:
    for _ in range(times):
        with file_lock(path):
            count = json.loads(path.read_text())["count"]
            time.sleep(0.002)  # another process reads the same count here unless it waits
            write_json_atomic(path, {"count": count + 1})


def test_processes_adding_to_one_file_take_turns_and_leave_nothing_beside_it(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"count": 0})
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_ones, args=(path, 25)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert json.loads(path.read_text()) == {"count": 75}, "an update was lost"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_without_file_locks_the_write_still_happens_and_leaves_nothing_beside_it(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "results.json"
    with file_lock(path):
        write_json_atomic(path, {"count": 1})
    assert json.loads(path.read_text()) == {"count": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
