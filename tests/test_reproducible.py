"""Reproducibility end to end at tiny scale: the same inputs give the same bytes (synth, ingest),
the same parameters (pretrain, for any loader worker count and either place the augmentation
runs) and the same accuracies (evaluate). Each check compares two runs made by the same code in
the same test, so it holds whatever the presets' values are."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vivi.config import apply_overrides, preset

# Fields of an index record that may differ between two ingests of the same bytes (timings):
# none today; a timing added to the records belongs here, not in a looser comparison.
TIMING_FIELDS: frozenset[str] = frozenset()


def _digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- synth -----------------------------------------------------------------------------------


def test_synth_same_seed_gives_byte_identical_videos_and_ground_truth(tmp_path):
    from vivi.data.synth import render_corpus

    render_corpus(tmp_path / "a", videos=2, seed=11, workers=1, progress=False)
    render_corpus(tmp_path / "b", videos=2, seed=11, workers=1, progress=False)
    a = _digests(tmp_path / "a")
    assert sorted(a) == ["ground_truth.jsonl", "videos/video_00000.mp4", "videos/video_00001.mp4"]
    assert _digests(tmp_path / "b") == a
    # a video depends on the seed and its number, not on how many videos the corpus has
    render_corpus(tmp_path / "c", videos=1, seed=11, workers=1, progress=False)
    assert _digests(tmp_path / "c")["videos/video_00000.mp4"] == a["videos/video_00000.mp4"]
    # and the seed is used: another one renders another world
    render_corpus(tmp_path / "d", videos=1, seed=12, workers=1, progress=False)
    assert _digests(tmp_path / "d")["videos/video_00000.mp4"] != a["videos/video_00000.mp4"]


# --- ingest ----------------------------------------------------------------------------------


def _records(data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (data / "index.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _shard_members(data: Path) -> dict[str, bytes]:
    """Every member of every shard, by name (the shards' byte layout aside)."""
    members: dict[str, bytes] = {}
    for shard in sorted((data / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                f = tar.extractfile(info)
                assert f is not None and info.name not in members
                members[info.name] = f.read()
    return members


def test_ingest_twice_gives_identical_index_and_shards(tiny_world, tiny_data, tmp_path):
    from vivi.data.ingest import ingest

    again = tmp_path / "data"
    ingest(tiny_world / "videos", again, workers=1, short_side=96, progress=False)
    assert _records(again) == _records(tiny_data)
    shards = sorted(p.name for p in (tiny_data / "shards").glob("*.tar"))
    assert shards and shards == sorted(p.name for p in (again / "shards").glob("*.tar"))
    for name in shards:  # byte for byte: member order, headers (no mtimes) and JPEG bytes
        assert (again / "shards" / name).read_bytes() == (tiny_data / "shards" / name).read_bytes()


def test_ingest_in_two_worker_processes_gives_the_same_records_and_frames(tiny_world, tiny_data, tmp_path):
    """Worker processes decode and encode exactly as the main process does. (Their records are
    appended in the order videos finish, so the order of index.jsonl, and with it the shards' layout,
    may differ: compared by key here.)"""
    from vivi.data.ingest import ingest

    again = tmp_path / "data"
    ingest(tiny_world / "videos", again, workers=2, short_side=96, progress=False, isolate=True)
    def by_key(data: Path) -> dict[str, dict]:  # where a sample lies in its shard follows the order
        return {r["key"]: {k: v for k, v in r.items() if k != "shard_span"} for r in _records(data)}

    assert by_key(again) == by_key(tiny_data)
    assert _shard_members(again) == _shard_members(tiny_data)


# --- pretrain --------------------------------------------------------------------------------

# VIVI-Ex(2): frames and shots (exemplar triplets) and the video loss (InfoNCE), at tiny scale.
PRETRAIN = ["data.videos=2", "optim.lr=0.035", "optim.steps=3", "log_every=1", "data.frames=4", "device=cpu", "data.cache_mb=0"]


def _pretrain(data: Path, out: Path, *settings: str, threads: int = 1) -> Path:
    from vivi.train.loop import pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return pretrain(apply_overrides(preset("VIVI-Ex(2)"), [*PRETRAIN, *settings]), [data], out, progress=False)
    finally:
        torch.set_num_threads(before)


def _state(run: Path) -> dict[str, torch.Tensor]:
    """The final checkpoint's model and optimiser tensors and the exported backbone's, by name."""
    from safetensors.torch import load_file

    from vivi.train.checkpoint import list_checkpoints, load_checkpoint

    ckpt = load_checkpoint(list_checkpoints(run)[-1])
    assert ckpt["step"] == 3
    out = {f"model/{k}": v for k, v in ckpt["model"].items()}
    for i, (slot, state) in enumerate(sorted(ckpt["optimizer"]["state"].items())):
        out |= {f"optimizer/{slot}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert i > 0  # the optimiser keeps a state per parameter (momentum)
    out |= {f"backbone/{k}": v for k, v in load_file(run / "backbone.safetensors").items()}
    return out


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """One thread, the batch built in the training process (data.workers=0), augmented there."""
    return _pretrain(tiny_data, tmp_path_factory.mktemp("ref") / "run", "data.workers=0")


def test_pretrain_twice_is_bitwise_identical(tiny_data, reference_run, tmp_path):
    run = _pretrain(tiny_data, tmp_path / "run", "data.workers=0")
    _assert_bitwise(_state(run), _state(reference_run))
    assert _losses(run) == _losses(reference_run)
    for name in ("config.json", "data.json", "video_table.npz"):
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name


@pytest.mark.parametrize("workers", [1, 2])
def test_loader_workers_do_not_change_the_parameters(tiny_data, reference_run, tmp_path, workers):
    """README: batches are a function of (seed, step), whatever the number of loader processes."""
    run = _pretrain(tiny_data, tmp_path / "run", f"data.workers={workers}")
    _assert_bitwise(_state(run), _state(reference_run))


def test_augmenting_in_loader_workers_is_reproducible_for_any_worker_count(tiny_data, reference_run, tmp_path):
    """augment.where=loader draws from a generator of (seed, step, rank): the same parameters in the
    training process and in two workers. (It is another stream than the device's, so not equal to it.)"""
    inline = _pretrain(tiny_data, tmp_path / "inline", "augment.where=loader", "data.workers=0")
    workers = _pretrain(tiny_data, tmp_path / "workers", "augment.where=loader", "data.workers=2")
    _assert_bitwise(_state(workers), _state(inline))
    assert _losses(inline) != _losses(reference_run)  # a different augmentation stream, as documented


def test_two_threads_are_reproducible_too(tiny_data, tmp_path):
    """At a fixed thread count a run is bitwise reproducible; another count is not (float sums split
    across threads round differently, and training amplifies it): compare runs at one count."""
    first = _pretrain(tiny_data, tmp_path / "a", "data.workers=0", threads=2)
    second = _pretrain(tiny_data, tmp_path / "b", "data.workers=0", threads=2)
    _assert_bitwise(_state(first), _state(second))


def test_another_seed_trains_another_model(tiny_data, reference_run, tmp_path):
    """The seed is used (a run that ignored it would pass every test above)."""
    run = _pretrain(tiny_data, tmp_path / "run", "data.workers=0", "seed=1")
    assert not torch.equal(_state(run)["backbone/stem.conv.weight"], _state(reference_run)["backbone/stem.conv.weight"])


# --- evaluate --------------------------------------------------------------------------------


def _tiny_task(name: str, seed: int):
    """Two classes told apart by brightness, with noise: accuracy neither 0 nor 100 by construction."""
    from vivi.data.tasks import ArraySplit, ImageTask

    rng = np.random.default_rng(seed)

    def split(n: int) -> ArraySplit:
        labels = np.arange(n) % 2
        images = rng.integers(0, 200, (n, 16, 16, 3)) + 6 * labels[:, None, None, None]
        return ArraySplit(images.clip(0, 255).astype(np.uint8), labels)

    return ImageTask(name, "natural", ["dark", "bright"], split(40), split(20), split(40))


def _evaluate(protocol: str, out: Path, threads: int = 1, device: str = "cpu") -> dict:
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.suite import evaluate_tasks

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        enc = load_encoder("random:tiny", seed=0)
        return evaluate_tasks(enc.model, [_tiny_task("a", 0), _tiny_task("b", 1)], protocol=protocol,
                              image_size=32, device=device, out_json=out, model_name="random", progress=False)
    finally:
        torch.set_num_threads(before)


def _without_timings(result: dict) -> dict:
    return {**result, "tasks": [{k: v for k, v in t.items() if k != "seconds"} for t in result["tasks"]]}


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_evaluate_twice_gives_identical_results(tmp_path, protocol):
    first = _evaluate(protocol, tmp_path / "a.json")
    second = _evaluate(protocol, tmp_path / "b.json", device="cpu:0")  # another spelling of the device
    assert _without_timings(second) == _without_timings(first)
    assert all(0 < t["accuracy"] < 100 for t in first["tasks"])


# --- demo and study --------------------------------------------------------------------------


def test_the_training_table_is_a_function_of_the_videos_not_of_the_index_order(tiny_data, tmp_path):
    """Ingest appends a record as its worker finishes: with 2+ workers the same videos came in another
    order from one ingest to the next, and the table (numbered in index order) drew other batches."""
    from vivi.config import preset
    from vivi.data.batches import training_videos
    from vivi.train.data_record import data_record

    records = _records(tiny_data)
    cfg = preset("VIVI-Ex(4)").data
    tables = [training_videos(iter(order), cfg, "d") for order in (records, records[::-1], records[1:] + records[:1])]
    for table in tables[1:]:
        assert table.keys.tolist() == tables[0].keys.tolist()
        assert table.shot_starts.tolist() == tables[0].shot_starts.tolist()
        assert table.shot_frames.tolist() == tables[0].shot_frames.tolist()
        assert data_record([tiny_data], table, None) == data_record([tiny_data], tables[0], None)


def test_a_run_from_before_the_key_order_says_why_it_cannot_resume(tiny_data, tmp_path):
    from vivi.errors import JobError
    from vivi.train.data_record import check_same_data, write_data_record

    old = {"sources": [str(tiny_data)], "kind": "videos", "items": 3, "fingerprint": "0123456789abcdef"}
    write_data_record(tmp_path, old)  # as an older vivi wrote it: no "order"
    now = {**old, "order": "key", "fingerprint": "fedcba9876543210"}
    with pytest.raises(JobError, match="ordered the videos as the index lists them"):
        check_same_data(tmp_path, now)
    write_data_record(tmp_path, {**old, "order": "key"})
    with pytest.raises(JobError) as other:
        check_same_data(tmp_path, now)
    assert "index lists" not in str(other.value)  # other data of the same size: only the usual line


def _check_provenance(made: dict) -> None:
    import vivi

    assert made["vivi"] == vivi.__version__ and made["torch"] == torch.__version__
    assert {"git_commit", "git_dirty", "torchvision", "python", "threads"} <= made.keys()
    if (Path(vivi.__file__).resolve().parent.parent / ".git").exists():  # a checkout: its commit
        assert len(made["git_commit"]) == 40 and isinstance(made["git_dirty"], bool)


def test_study_summary_records_the_code_and_library_versions(tmp_path):
    from vivi.study import SIZES, write_study_report

    write_study_report(tmp_path, SIZES["quick"], {}, {}, 1.0)
    _check_provenance(json.loads((tmp_path / "study_summary.json").read_text())["provenance"])


def test_runs_and_results_record_the_code_and_library_versions(reference_run, tmp_path):
    """One line per start of a run (a resume may run other code), and one per evaluated task."""
    lines = [json.loads(line) for line in (reference_run / "provenance.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0] and lines[0]["processes"] == 1 and lines[0]["device"] == "cpu"
    _check_provenance(lines[0])
    result = _evaluate("knn", tmp_path / "r.json")
    for entry in result["tasks"]:
        _check_provenance(entry["provenance"])


def test_mini_vtab_renders_the_same_images_in_one_process_and_in_two(tmp_path):
    """The evaluation suite is a function of its seed: a cache rendered elsewhere (another machine,
    another core count) holds the same images and labels."""
    from vivi.data.synth.tasks import build_suite

    one = build_suite(tmp_path / "one", n_train=3, n_val=2, n_test=2, size=16, workers=1, progress=False)
    two = build_suite(tmp_path / "two", n_train=3, n_val=2, n_test=2, size=16, workers=2, progress=False)
    files = sorted(p.name for p in one.glob("*.npz"))
    assert files and files == sorted(p.name for p in two.glob("*.npz"))
    for name in files:
        with np.load(one / name) as a, np.load(two / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert np.array_equal(a[key], b[key]), (name, key)


def test_the_same_backbone_is_saved_as_the_same_bytes(tmp_path):
    """safetensors writes metadata keys in a random order: identical runs gave files of other checksums."""
    from vivi.config import preset
    from vivi.models.backbone import build_backbone, load_backbone, save_backbone

    spec = preset("VIVI-Ex(4)").model.backbone
    torch.manual_seed(0)
    model = build_backbone(spec)
    extra = {"image_size": "64", "preset": "VIVI-Ex(4)", "scale": "tiny"}
    files = [tmp_path / f"b{i}.safetensors" for i in range(5)]
    for path in files:
        save_backbone(model, spec, path, extra=extra)
    assert len({path.read_bytes() for path in files}) == 1
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_backbone(files[0])(x), model.eval()(x), rtol=0, atol=0)
