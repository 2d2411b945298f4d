"""The built-in video world (`vivi synth`) and the mini-VTAB suite: formats, determinism, structure."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from vivi.data.synth import CLASS_NAMES, SCENE_NAMES, TASKS, build_suite, render_corpus
from vivi.data.synth import tasks as suite_module
from vivi.errors import UserError

SIZE, FPS = 64, 4.0


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines()]


def _decode(path: Path, limit: int | None = None) -> np.ndarray:
    """Decoded RGB frames [n, H, W, 3] (all, or the first ``limit``)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if limit and len(frames) == limit:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    return render_corpus(out, videos=3, seed=7, workers=1, size=SIZE, fps=FPS, progress=False)


@pytest.fixture(scope="module")
def decoded(corpus: Path) -> dict[str, np.ndarray]:
    """Every corpus video decoded once."""
    return {rec["video"]: _decode(corpus / rec["video"]) for rec in _records(corpus)}


def test_same_seed_same_corpus_whatever_the_workers(corpus: Path, decoded: dict, tmp_path: Path) -> None:
    other = render_corpus(tmp_path / "b", videos=2, seed=7, workers=2, size=SIZE, fps=FPS, progress=False)
    assert _records(other) == _records(corpus)[:2]
    for rec in _records(other):
        np.testing.assert_array_equal(_decode(other / rec["video"], 8), decoded[rec["video"]][:8])


def test_different_seed_differs(corpus: Path, tmp_path: Path) -> None:
    other = render_corpus(tmp_path / "c", videos=1, seed=8, workers=1, size=SIZE, fps=FPS, progress=False)
    assert _records(other)[0]["shots"] != _records(corpus)[0]["shots"]


def test_mp4_is_h264_with_recorded_frames_and_size(corpus: Path, decoded: dict) -> None:
    for rec in _records(corpus):
        with av.open(str(corpus / rec["video"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
        frames = decoded[rec["video"]]
        assert frames.shape == (rec["num_frames"], rec["height"], rec["width"], 3)
        assert (rec["width"], rec["height"], rec["fps"]) == (SIZE, SIZE, FPS)


def test_shots_transitions_and_cuts_tile_the_video(corpus: Path) -> None:
    for rec in _records(corpus):
        shots, trans = rec["shots"], rec["transitions"]
        assert 4 <= len(shots) <= 7
        assert shots[0]["start_frame"] == 0 and shots[-1]["end_frame"] == rec["num_frames"] - 1
        starts = {t["start_frame"]: t for t in trans}
        for prev, nxt in zip(shots, shots[1:]):
            gap = prev["end_frame"] + 1
            if gap in starts:  # a gradual transition: its frames belong to no shot
                t = starts[gap]
                assert t["kind"] in ("dissolve", "fade") and 4 <= t["end_frame"] - t["start_frame"] + 1 <= 6
                assert nxt["start_frame"] == t["end_frame"] + 1 and nxt["start_frame"] not in rec["cuts"]
            else:
                assert nxt["start_frame"] == gap and gap in rec["cuts"]
        assert len(rec["cuts"]) + len(trans) == len(shots) - 1
        for s in shots:
            assert (s["end_frame"] - s["start_frame"] + 1) / rec["fps"] >= 9.0


def test_cuts_are_where_content_changes_abruptly(corpus: Path, decoded: dict) -> None:
    for rec in _records(corpus):
        frames = decoded[rec["video"]].astype(np.int16)
        diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[t - 1]: frame t vs t - 1
        within = np.concatenate([diff[s["start_frame"] : s["end_frame"]] for s in rec["shots"]])
        for cut in rec["cuts"]:
            assert diff[cut - 1] > 3 * np.median(within), (rec["video"], cut)


def test_shot_attributes_are_recorded(corpus: Path) -> None:
    for rec in _records(corpus):
        assert SCENE_NAMES[rec["scene"]] == rec["scene_name"]
        for s in rec["shots"]:
            assert s["count"] == len(s["objects"]) >= 1
            for o in s["objects"]:
                assert CLASS_NAMES[o["cls"]] == o["cls_name"]
                assert 0 <= o["yaw_deg"] < 360 and o["size"] > 0 and o["depth"] >= 0.9
                assert set(o["end"]) == {"x", "y", "yaw_deg", "tilt_deg", "size", "depth"}
            assert {"azimuth_deg", "angle_deg", "brightness", "contrast"} <= set(s["light"])


def test_bad_corpus_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        render_corpus(tmp_path, videos=0, progress=False)
    with pytest.raises(UserError):
        render_corpus(tmp_path, videos=1, size=65, progress=False)


SMALL = dict(n_train=12, n_val=6, n_test=10, size=32, progress=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_suite(tmp_path_factory.mktemp("suite"), seed=3, workers=1, **SMALL)


def test_suite_files_shapes_labels_and_balance(suite: Path) -> None:
    meta = json.loads((suite / "suite.json").read_text())
    assert meta["name"] == "mini-vtab" and meta["size"] == 32
    assert [t["name"] for t in meta["tasks"]] == list(TASKS) and len(TASKS) >= 9
    assert {t["group"] for t in meta["tasks"]} == {"natural", "specialized", "structured"}
    for entry in meta["tasks"]:
        classes = len(entry["classes"])
        with np.load(suite / f"{entry['name']}.npz") as data:
            for split, n in (("train", 12), ("val", 6), ("test", 10)):
                x, y = data[f"x_{split}"], data[f"y_{split}"]
                assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
                assert y.shape == (n,) and y.dtype == np.int64
                assert y.min() >= 0 and y.max() < classes
                counts = np.bincount(y, minlength=classes)
                assert counts.max() - counts.min() <= 1
            assert data["x_train"].std() > 5  # real images, not blanks


def test_suite_is_deterministic_and_worker_independent(suite: Path, tmp_path: Path) -> None:
    other = build_suite(tmp_path, seed=3, workers=2, **SMALL)
    for name in ("object", "count"):
        with np.load(suite / f"{name}.npz") as a, np.load(other / f"{name}.npz") as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])


def test_suite_is_a_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = dict(n_train=10, n_val=10, n_test=10, size=16, workers=1, progress=False)
    build_suite(tmp_path, **tiny)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-rendered a cached suite")

    monkeypatch.setattr(suite_module, "_render_all", fail)
    assert build_suite(tmp_path, **tiny) == tmp_path
    with pytest.raises(AssertionError):  # other parameters: rebuilt
        build_suite(tmp_path, **{**tiny, "n_test": 11})
    assert not (tmp_path / "suite.json").exists()  # an interrupted rebuild never looks complete


def test_an_example_renders_alone_as_in_a_batch() -> None:
    """Images depend on their own seed only, not on which others share their batch."""
    index = list(TASKS).index("scene")
    _, _, _, batch = suite_module._chunk(("scene", index, 0, 5, 0, [0, 3, 7], 40))
    for k, label in enumerate([0, 3, 7]):
        rng = np.random.default_rng(suite_module.image_seed(5, index, 0, k))
        np.testing.assert_array_equal(TASKS["scene"].render(rng, label, 40), batch[k])
