"""End to end on the built-in world: sampler vs ground truth, pretraining, export, CLI errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vivi
from conftest import ground_truth
from vivi.config import apply_overrides, preset
from vivi.data.batches import StepClips, choose_clip, training_videos
from vivi.data.shards import read_index
from vivi.train.loop import pretrain


def _gt_shot_of(gt: dict, frame: int) -> int:
    """Index of the ground-truth shot holding a frame (-1: inside a transition)."""
    for i, shot in enumerate(gt["shots"]):
        if shot["start_frame"] <= frame <= shot["end_frame"]:
            return i
    return -1


def test_sampler_yields_consecutive_shots_and_frames(tiny_world, tiny_data):
    gts = ground_truth(tiny_world)
    records = [r for r in read_index([tiny_data]) if r["status"] == "ok"]
    assert len(records) == 3
    cfg = preset("VIVI-Ex(4)").data
    rng = random.Random(0)
    for record in records:
        gt = gts[str(Path(record["source"]).resolve())]
        for _ in range(20):
            clip = choose_clip(record, cfg, rng)
            assert clip is not None and len(clip.frames) == 4
            gt_shots = []
            for shot in clip.frames:
                assert len(shot) == 8
                samples = record["shots"][shot[0][0]]["frames"]
                frame_ids = [samples[f]["frame"] for _, f in shot]
                owners = {_gt_shot_of(gt, fr) for fr in frame_ids}
                assert len(owners) == 1 and -1 not in owners, "the F frames must lie in one true shot"
                assert [f for _, f in shot] == list(range(shot[0][1], shot[0][1] + 8)), "consecutive samples"
                assert all(b > a for a, b in zip(frame_ids, frame_ids[1:]))
                gt_shots.append(owners.pop())
            assert gt_shots == list(range(gt_shots[0], gt_shots[0] + 4)), "K consecutive true shots"


def test_step_clips_decode_the_chosen_frames(tiny_data):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.load_size=64", "data.videos=2"]).data
    table = training_videos(read_index([tiny_data]), cfg, str(tiny_data))
    clip = StepClips(table, cfg, seed=1)[0][0]
    assert clip.shape == (4, 8, 3, 64, 64) and clip.dtype == torch.uint8
    # frames of one shot are alike, frames of different shots less so
    x = clip.float()
    within = (x[:, 1:] - x[:, :-1]).abs().mean()
    across = (x[1:, 0] - x[:-1, 0]).abs().mean()
    assert within < across


def test_cached_frames_give_the_same_batches(tiny_data):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.load_size=64", "data.videos=3"]).data
    table = training_videos(read_index([tiny_data]), cfg, str(tiny_data))
    cached = StepClips(table, cfg, seed=0)
    plain = StepClips(table, apply_overrides(preset("VIVI-Ex(4)"), ["data.load_size=64", "data.videos=3", "data.cache_mb=0"]).data, seed=0)
    for step in range(6):
        assert torch.equal(cached[step], plain[step])
    assert cached.cache.hits > 0 and plain.cache.hits == 0 and len(plain.cache) == 0


def test_videos_that_give_no_clip_are_named_once_left_out(tiny_data, capsys):
    """Only data.json's count said that training had left some videos out (158 of 160 in the tour)."""
    records = read_index([tiny_data])
    short = next(r for r in records if r.get("status") == "ok")
    short["shots"] = short["shots"][:1]  # one shot: no clip of 4 consecutive shots
    ok = sum(r.get("status") == "ok" for r in records)
    table = training_videos(records, preset("VIVI-Ex(4)").data, "DATA")
    assert len(table) == ok - 1
    said = capsys.readouterr().err
    assert f"DATA: 1 of {ok} videos has no 4 consecutive shots of >= 8 frames, so training leaves it out ({short['key']})" in said
    training_videos(read_index([tiny_data]), preset("VIVI-Ex(4)").data, "DATA")
    assert "leaves" not in capsys.readouterr().err, "nothing said when every video is used"


def test_a_shard_damaged_after_ingest_is_named(tiny_data, tmp_path):
    """The loader reads a video's tar members itself: a shard cut short or overwritten after the
    index was made must stop with the shard and sample named, not a traceback or garbage."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    records = read_index([data])
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.load_size=64", "data.videos=3"]).data
    table = training_videos(records, cfg, str(data))
    shard = Path(table.shards[0])
    raw = bytearray(shard.read_bytes())
    start, end = int(table.spans[0, 1]), int(table.spans[0, 2])
    raw[start + 600 : end - 600] = b"\xff" * (end - start - 1200)  # the first video's members, scrambled
    shard.write_bytes(bytes(raw))
    with pytest.raises(vivi.errors.UserError, match=f"{shard.name}.*{table.key(0)}"):
        StepClips(table, cfg, seed=0)[0]


def test_pretrain_exports_a_loadable_backbone_and_resumes(tiny_data, tmp_path):
    cfg = apply_overrides(
        preset("VIVI-Ex(4)"),
        ["data.videos=2", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1", "optim.lr=0.05"],
    )
    run = pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["loss_sf"], r["loss_v"]])).all() for r in rows)
    model = vivi.load_backbone(run)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, model.num_features)
    # the same command again finds the finished run and does no extra step
    pretrain(cfg, [tiny_data], run, progress=False)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_ex_yt_f_uses_one_fixed_frame_per_video(tiny_data):
    cfg = preset("Ex-YT-F").data
    record = next(r for r in read_index([tiny_data]) if r["status"] == "ok")
    clips = {choose_clip(record, cfg, random.Random(i), seed=0) for i in range(5)}
    assert len(clips) == 1
    (frames,) = clips.pop().frames
    assert len(frames) == 8 and len(set(frames)) == 1


def _vivi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vivi", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["pretrain", "--preset", "VIVI-Ex(9)", "--data", "x", "--out", "y"], "unknown preset"),
        (["pretrain", "--preset", "VIVI-Ex(4)", "--data", "/nonexistent/data", "--out", "y"], "/nonexistent/data"),
        (["evaluate", "/nonexistent/run", "--task", "mini-vtab"], "/nonexistent/run"),
    ],
)
def test_cli_bad_input_is_one_line_error(args, needle):
    res = _vivi(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0]


def test_cli_empty_data_folder_and_corrupt_backbone(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _vivi("pretrain", "--preset", "VIVI-Ex(4)", "--data", str(empty), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and str(empty) in res.stderr
    bad = tmp_path / "backbone.safetensors"
    bad.write_bytes(b"garbage" * 10)
    res = _vivi("evaluate", str(bad), "--task", "mini-vtab")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "backbone.safetensors" in res.stderr


def test_cli_task_folder_without_classes(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "task" / split).mkdir(parents=True)
    res = _vivi("evaluate", "random:tiny", "--task", f"imagefolder:{tmp_path / 'task'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "task" in res.stderr


def test_load_frame_resizes_short_side_and_centre_crops():
    import io

    import numpy as np
    from PIL import Image

    from vivi.data.frames import load_frame

    rgb = np.zeros((60, 120, 3), dtype=np.uint8)
    rgb[:, 30:90] = 255  # a white centre band, black sides
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    out = load_frame(buf.getvalue(), 30)
    assert out.shape == (3, 30, 30) and out.dtype == torch.uint8
    assert out.float().mean() > 240  # the centre crop keeps only the white band


@pytest.mark.parametrize(
    "command",
    [["ingest", "SRC"], ["pretrain", "--preset", "Ex-YT-F", "--data", "SRC", "--out"], ["report", "RES", "-o"],
     ["evaluate", "random:tiny", "--task", "mini-vtab", "--out"]],
)
def test_cli_output_that_cannot_be_written_is_a_one_line_error_before_any_work(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = {"model": "m", "tasks": [{"task": "t", "group": "g", "accuracy": 1.0}]}
    (tmp_path / "res.json").write_text(json.dumps(result))
    (tmp_path / "list.txt").write_text("video.mp4\n")
    args = [{"SRC": str(tmp_path / "list.txt"), "RES": str(tmp_path / "res.json")}.get(a, a) for a in command]
    res = _vivi(*args, str(blocker / "out.json") if command[0] == "evaluate" else str(blocker))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"vivi: error: {blocker}")


def test_cli_turns_an_os_error_on_a_named_file_into_one_line(monkeypatch, capsys):
    """A full disk or a vanished folder mid-command is the user's to fix: one line, no traceback."""
    from vivi import cli

    def full_disk(args):
        raise OSError(28, "No space left on device", "/data/out/shard-000001.tar.tmp")

    monkeypatch.setattr(cli, "_report", full_disk)
    assert cli.main(["report", "x.json", "-o", "out"]) == 2
    assert capsys.readouterr().err == "vivi: error: /data/out/shard-000001.tar.tmp: No space left on device\n"


def test_a_folder_given_twice_gives_each_video_once(tiny_data, capsys):
    cfg = apply_overrides(preset("VIVI-Ex(4)"), ["data.videos=2"]).data
    once = training_videos(read_index([tiny_data]), cfg, "x")
    twice = training_videos(read_index([tiny_data, tiny_data]), cfg, "x")
    assert twice.keys.tolist() == once.keys.tolist()
    assert f"x: {len(once)} videos appear more than once" in capsys.readouterr().err


def test_a_video_listed_twice_is_its_first_record_and_videos_go_by_key():
    """Resumes and data fingerprints depend on this order: by key, not by where the index lists them."""
    def record(key: str, frames: int) -> dict:
        shots = [{"frames": [{"frame": i} for i in range(frames)]} for _ in range(4)]
        return {"key": key, "status": "ok", "shots": shots, "shard": "/s.tar", "shard_span": [0, 512]}

    cfg = preset("VIVI-Ex(4)").data
    table = training_videos(iter([record("a", 8), record("b", 9), record("a", 10), record("c", 3)]), cfg, "x")
    assert table.keys.tolist() == [b"a", b"b"]  # c has too few frames per shot
    assert table.shot_lengths(0) == [8] * 4 and table.shot_lengths(1) == [9] * 4


def test_the_table_keeps_a_few_bytes_per_video_not_the_records(tiny_data):
    """A million videos' records are tens of GB of Python objects, held by every rank and copied
    into every forked loader worker (or pickled to every spawned one); the table keeps arrays."""
    import pickle

    records = read_index([tiny_data])
    table = training_videos(iter(records), preset("VIVI-Ex(4)").data, str(tiny_data))
    per_video = len(pickle.dumps(table)) / len(table)
    per_record = len(pickle.dumps(records)) / len(records)
    assert per_video < 400 < per_record / 4, (per_video, per_record)


def test_fewer_videos_than_the_batch_needs_is_said(tiny_data, tmp_path, capsys, one_thread):
    """Repeated videos in a batch make some negatives a positive's own video: the user is told."""
    tiny = ["data.videos=8", "data.workers=0", "optim.steps=1", "model.backbone.channels=8,8,8,8"]
    cfg = apply_overrides(preset("Ex-YT-F"), tiny)
    pretrain(cfg, [tiny_data], tmp_path / "run", progress=False)
    assert "3 usable videos for data.videos=8 per batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value", [("--steps", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--image-size", "0"), ("--k", "-1")]
)
def test_cli_evaluate_numbers_that_would_be_ignored_or_crash_are_refused(option, value, capsys):
    """--steps 0 or --image-size 0 used to fall back to the default silently; --lr -1 was a traceback."""
    from vivi.cli import main

    with pytest.raises(SystemExit) as info:
        main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent", option, value])
    assert info.value.code == 2
    assert f"argument {option}: '{value}': expected a number" in capsys.readouterr().err


def test_warnings_are_said_once_under_torchrun(monkeypatch, capsys):
    from vivi.errors import warn

    monkeypatch.setenv("RANK", "1")
    warn("seen by every rank")
    monkeypatch.setenv("RANK", "0")
    warn("said by rank 0")
    assert capsys.readouterr().err.splitlines() == ["vivi: warning: said by rank 0"]


def test_one_file_ingested_from_a_list_and_its_folder_is_trained_on_once(tiny_world, tiny_data, tmp_path, capsys):
    """Keys come from names as listed, so a curated list (absolute paths) of a folder's videos gives
    them other keys: trained on together, each video counted twice. Their location and size say they
    are one; the smaller key is kept whatever the order of --data."""
    from vivi.config import apply_overrides, preset
    from vivi.data.batches import training_videos
    from vivi.data.ingest import ingest
    from vivi.data.shards import read_index

    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in sorted((tiny_world / "videos").glob("*.mp4"))))
    ingest(listing, tmp_path / "again", workers=1, short_side=96, progress=False)
    cfg = apply_overrides(preset("Ex-YT-S"), ["data.frames=2"]).data
    alone = training_videos(read_index([tiny_data]), cfg, "a")
    capsys.readouterr()
    both = [training_videos(read_index(outs), cfg, "b") for outs in ([tiny_data, tmp_path / "again"],
                                                                    [tmp_path / "again", tiny_data])]  # fmt: skip
    assert len(alone) == len(both[0]) == len(both[1]) == 3
    assert [both[0].key(i) for i in range(3)] == [both[1].key(i) for i in range(3)]
    assert "3 videos appear more than once" in capsys.readouterr().err
