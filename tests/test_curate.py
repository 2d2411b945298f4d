"""VideoNet-style curation on the built-in world, whose scene classes are known."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ground_truth
from vivi.data.curate import curate, match_distribution, parse_target, write_curation
from vivi.data.shards import read_index
from vivi.errors import UserError


def test_match_distribution_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    confidence = np.array([0.9, 0.5, 0.7, 0.6, 0.8, 0.4, 0.3, 0.95, 0.2])
    selected, weights = match_distribution(labels, confidence, np.full(3, 1 / 3))
    # class 1 has 2 videos: 2 per class, the most confident of each
    assert selected.tolist() == [0, 2, 4, 5, 6, 7]
    np.testing.assert_allclose(weights[[0, 4, 6]], [(1 / 3) / (4 / 9), (1 / 3) / (2 / 9), (1 / 3) / (3 / 9)])
    selected, _ = match_distribution(labels, confidence, np.array([0.5, 0.5, 0.0]))
    assert selected.tolist() == [0, 2, 4, 5]
    selected, _ = match_distribution(np.array([0, 0, 2]), np.ones(3), np.full(3, 1 / 3))
    assert selected.tolist() == [0, 2]  # class 1 has no video: uniform over classes 0 and 2 instead


def test_target_file(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"a": 3, "c": 1}))
    np.testing.assert_allclose(parse_target(str(tmp_path / "t.json"), ["a", "b", "c"]), [0.75, 0, 0.25])
    (tmp_path / "bad.json").write_text(json.dumps({"zebra": 1}))
    with pytest.raises(UserError, match="zebra"):
        parse_target(str(tmp_path / "bad.json"), ["a", "b"])


def test_curation_balances_the_worlds_scenes(tiny_world, tiny_data, tmp_path):
    """An oracle classifier (the rendered scene of the video a frame came from) must give a selection
    whose scene histogram is uniform over the scenes present, and the report must say so."""
    gts = ground_truth(tiny_world)
    records = [r for r in read_index([tiny_data]) if r["status"] == "ok"]
    scenes = sorted({gts[str(Path(r["source"]).resolve())]["scene_name"] for r in records})
    order = iter(records)  # curate scores videos shard by shard, in index order within a shard
    scored: list[str] = []

    def oracle(images):
        record = next(order)
        scored.append(record["source"])
        scene = gts[str(Path(record["source"]).resolve())]["scene_name"]
        p = np.full((len(images), len(scenes)), 0.01)
        p[:, scenes.index(scene)] = 1.0
        return p / p.sum(1, keepdims=True)

    result = curate([tiny_data], oracle, scenes, size=32, progress=False)
    assert result.sources == scored
    truth = [scenes.index(gts[str(Path(s).resolve())]["scene_name"]) for s in result.sources]
    assert result.labels.tolist() == truth
    after = result.histogram(result.selected)
    present = result.histogram() > 0
    assert len(set(after[present].tolist())) == 1 and after[present].min() == result.histogram()[present].min()
    listing, details = write_curation(result, tmp_path / "curated.txt")
    assert listing.read_text().splitlines() == [result.sources[i] for i in result.selected]
    report = json.loads(details.read_text())
    assert report["after"] == after.tolist() and report["before"] == result.histogram().tolist()


def test_cli_curates_with_a_probe_classifier(tiny_data, tmp_path, capsys):
    from PIL import Image

    from vivi.cli import main

    for c, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / "labelled" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), tuple(min(255, v + 10 * i) for v in colour)).save(tmp_path / "labelled" / c / f"{i}.png")
    out = tmp_path / "list.txt"
    code = main(["curate", str(tiny_data), "--classifier", "random:tiny", "--labelled", f"imagefolder:{tmp_path / 'labelled'}",
                 "-o", str(out), "--frames", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and "before  after  target" in printed
    report = json.loads(Path(str(out) + ".json").read_text())
    assert report["classes"] == ["blue", "red"] and len(report["videos"]) == 3
    assert len(out.read_text().splitlines()) == sum(report["after"])
    assert main(["curate", str(tiny_data), "--classifier", str(tmp_path), "-o", str(out)]) == 2  # not a run


def test_the_curated_list_can_be_ingested_from_anywhere(tmp_path, monkeypatch):
    """Sources were given relative to the folder ingest ran in; the list must not depend on that
    (a list's relative lines are read relative to the list's own folder)."""
    from test_ingest import write_video

    from vivi.data.ingest import ingest

    rng = np.random.default_rng(0)
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / "videos" / name, [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)] * 20)
    monkeypatch.chdir(tmp_path)
    ingest("videos", Path("data"), fps=2.0, progress=False)
    result = curate([Path("data")], lambda images: np.ones((len(images), 1)), ["all"], size=16, progress=False)
    listing, _ = write_curation(result, tmp_path / "elsewhere" / "list.txt")
    assert sorted(Path(p).name for p in listing.read_text().splitlines()) == ["a.mp4", "b.mp4"]
    assert ingest(listing, tmp_path / "again", fps=2.0, progress=False).videos_ok == 2


@pytest.mark.parametrize(("text", "said"), [("[1, 2]", "expected a JSON object of class -> weight"),
                                            ('{"a": "x"}', "the weight of a is 'x'; expected a finite number >= 0"),
                                            ('{"a": NaN, "b": 1}', "the weight of a is nan"),
                                            ('{"a": true}', "the weight of a is True")])  # fmt: skip
def test_a_bad_target_is_one_line_before_any_video_is_scored(text, said, tmp_path):
    """These raised TypeError/ValueError tracebacks, and only once every video had been scored."""
    (tmp_path / "t.json").write_text(text)
    scored = []
    with pytest.raises(UserError, match=f"t.json: {said}"):
        curate([tmp_path / "no-such-ingest"], lambda frames: scored.append(frames), ["a", "b"], 8,
               target=str(tmp_path / "t.json"), progress=False)  # fmt: skip
    assert scored == []


def _copy_ingest(tiny_data: Path, to: Path) -> tuple[Path, Path, list[dict]]:
    """A copy of the tiny ingest folder to damage: (folder, its one shard, its ok records in shard order)."""
    import shutil

    shutil.copytree(tiny_data, to)
    records = [r for r in read_index([to]) if r["status"] == "ok"]
    (shard,) = {r["shard"] for r in records}
    return to, Path(shard), records


def _score_all(outs: list[Path]):
    return curate(outs, lambda images: np.ones((len(images), 1)), ["all"], size=16, progress=False)


def test_an_ok_video_without_frames_in_its_shard_is_named_in_one_warning(tiny_data, tmp_path, capsys):
    """It was left out without a word: the selection silently came from fewer videos."""
    import tarfile

    data, shard, records = _copy_ingest(tiny_data, tmp_path / "data")
    gone = {records[0]["key"], records[1]["key"]}
    with tarfile.open(shard) as tar:
        frames_of_gone = [m for m in tar if m.name.split(".")[0] in gone and m.name.endswith(".jpg")]
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m not in frames_of_gone]
    with tarfile.open(shard, "w") as tar:
        for m, data_bytes in kept:
            tar.addfile(m, io.BytesIO(data_bytes))
    capsys.readouterr()
    result = _score_all([data])
    assert result.sources == [records[2]["source"]]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vivi: warning: {shard}: holds no frames of {records[0]['source']}")
    assert "(and of 1 more); left out" in err


@pytest.mark.parametrize("where", ["mid-member", "at-a-header"])
def test_a_shard_cut_short_keeps_the_videos_before_the_cut(tiny_data, tmp_path, capsys, where):
    """A .tar cut in the middle was a tarfile.ReadError traceback (or, cut at a header, read as whole)."""
    import tarfile

    data, shard, records = _copy_ingest(tiny_data, tmp_path / "data")
    with tarfile.open(shard) as tar:
        starts = [m for m in tar if m.name.startswith(records[1]["key"] + ".") and m.name.endswith(".jpg")]
    second = starts[-1]  # the second video's last frame: the cut leaves it incomplete
    cut = second.offset_data + 100 if where == "mid-member" else second.offset + 10
    raw = shard.read_bytes()
    shard.write_bytes(raw[:cut])
    capsys.readouterr()
    result = _score_all([data])
    assert result.sources == [records[0]["source"]]  # whole before the cut; the second is cut, the third is gone
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vivi: warning: {shard}: unreadable (")
    assert f"left out 2 video(s) whose frames it did not give whole, the first {records[1]['source']}" in err
    assert "Traceback" not in err


def test_a_shard_cut_before_any_whole_video_is_one_line(tiny_data, tmp_path):
    data, shard, _ = _copy_ingest(tiny_data, tmp_path / "data")
    shard.write_bytes(shard.read_bytes()[:300])
    with pytest.raises(UserError, match="none of the 3 ok videos has frames that could be read"):
        _score_all([data])


def test_a_target_class_no_video_has_keeps_the_closest_selection(capsys):
    """It was an error after all the scoring: nothing kept, and the user had to write a target by hand."""
    labels, confidence = np.array([0, 0, 2, 2, 2]), np.array([0.5, 0.9, 0.3, 0.8, 0.6])
    selected, weights = match_distribution(labels, confidence, np.full(3, 1 / 3), ["a", "b", "c"])
    assert selected.tolist() == [0, 1, 3, 4]  # a's two, and c's two most confident: a and c alike
    err = capsys.readouterr().err
    assert err == ("vivi: warning: --target cannot be met: no video is classified as b (33%); kept the closest "
                   "selection, the target over the other 2 classes in the same ratios\n")  # fmt: skip
    np.testing.assert_allclose(weights, [0.5 / 0.4] * 2 + [0.5 / 0.6] * 3)
    with pytest.raises(UserError) as info:
        match_distribution(labels, confidence, np.array([0.0, 1.0, 0.0]), ["a", "b", "c"])
    assert str(info.value) == ("--target: no video is classified as any class it asks for (b (100%)); the videos "
                               "are classified as c (3), a (2): give --target a JSON of weights for those")  # fmt: skip


def test_a_share_that_rounds_to_no_video_is_named(capsys):
    selected, _ = match_distribution(np.array([0, 1, 1, 1]), np.ones(4), np.array([0.9, 0.1]), ["big", "small"])
    assert selected.tolist() == [0]
    assert "the share of small rounds to no video in the largest selection" in capsys.readouterr().err


def test_the_list_keeps_names_that_are_not_utf8_and_leaves_out_line_breaks(tmp_path, capsys):
    """A video named in Latin-1 (ingested fine) stopped `vivi curate` with a UnicodeEncodeError and an
    empty list; a name with a line break read back as two "no such file" videos."""
    from vivi.data.curate import Curation, write_curation
    from vivi.data.ingest import list_sources

    latin1 = str(tmp_path / "caf\udce9.mp4")  # b"caf\xe9.mp4", as Python names it
    locations = [latin1, str(tmp_path / "two\nlines.mp4"), str(tmp_path / "plain.mp4")]
    result = Curation(["a"], locations, np.zeros(3, dtype=int), np.ones(3), np.arange(3), np.ones(3), np.ones(1),
                      locations)
    out, details = write_curation(result, tmp_path / "list.txt")
    assert out.read_bytes() == f"{tmp_path}/caf\xe9.mp4\n{tmp_path}/plain.mp4\n".encode("latin-1")
    err = capsys.readouterr().err
    assert "left out 1 selected video(s) whose path holds a line break" in err and err.count("\n") == 1
    assert [s.location for s in list_sources(out)] == [latin1, locations[2]]  # read back as written
    assert len(json.loads(details.read_text())["videos"]) == 3
