"""One-line errors and clean stops of the CLI: option bounds, out of memory, SIGTERM, ingest wording."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch

from vivi import cli
from vivi.cli import main
from vivi.data.ingest import IngestSummary
from vivi.data.stats import DatasetStats, format_stats
from vivi.errors import UserError


@pytest.mark.parametrize("value", ["100000", "4"])
def test_evaluate_image_size_is_bounded(value, capsys):
    """--image-size 100000 was an allocator's traceback after the model had loaded."""
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent", "--image-size", value])
    assert info.value.code == 2
    assert f"argument --image-size: '{value}': expected a number from 8 to 1024" in capsys.readouterr().err


def test_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(monkeypatch, capsys):
    from vivi.evaluate import encoders

    def too_big(*args: object, **kwargs: object) -> None:
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses it at once

    monkeypatch.setattr(encoders, "load_encoder", too_big)
    assert main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vivi: error: out of memory (tried to allocate {2**62} bytes); ") and err.count("\n") == 1

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(encoders, "load_encoder", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent"])


SIGTERM_DURING_EVALUATE = """
import os, signal, sys, time
from vivi.evaluate import encoders

def evaluating(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # as a batch system's time limit would, mid-evaluation
    time.sleep(30)

encoders.load_encoder = evaluating
from vivi import cli
from vivi.cli import main
sys.exit(main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent"]))
"""


SIGTERM_DURING_CURATE = """
import os, signal, sys, time
from vivi.evaluate import classifier

def fitting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # as a batch system's time limit would, mid-fit
    time.sleep(30)

classifier.probe_classifier = fitting
from vivi import cli
from vivi.cli import main
sys.exit(main(["curate", "/nonexistent", "--classifier", "random:tiny", "--labelled", "imagefolder:/nonexistent",
               "-o", "/tmp/list.txt"]))
"""


SIGTERM_DURING = """
import os, signal, sys, time
import {module} as where

def working(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

where.{function} = working
from vivi import cli
from vivi.cli import main
sys.exit(main({argv!r}))
"""
SIGTERM_DURING_SYNTH = SIGTERM_DURING.format(module="vivi.data.synth", function="render_corpus",
                                             argv=["synth", "/tmp/never-written"])
SIGTERM_DURING_DEMO = SIGTERM_DURING.format(module="vivi.demo", function="run_demo", argv=["demo"])
SIGTERM_DURING_REPORT = SIGTERM_DURING.format(module="vivi.evaluate.report", function="load_results",
                                              argv=["report", "r.json", "-o", "/tmp/never-written"])

# --device's check imports torch while the arguments are parsed: ~1 s in which SIGTERM killed any command silently
SIGTERM_DURING_PARSING = SIGTERM_DURING.format(module="vivi.cli", function="_device",
                                               argv=["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent"])


@pytest.mark.parametrize(
    "script",
    [SIGTERM_DURING_EVALUATE, SIGTERM_DURING_CURATE, SIGTERM_DURING_SYNTH, SIGTERM_DURING_DEMO, SIGTERM_DURING_REPORT,
     SIGTERM_DURING_PARSING],
    ids=["evaluate", "curate", "synth", "demo", "report", "parsing"],
)
def test_sigterm_stops_a_command_like_ctrl_c(script):
    """SIGTERM used to kill `vivi evaluate`, `curate`, `synth`, `demo` and `report`, and any command in its
    first second, silently (exit 143, no line); now it says how to resume, as Ctrl-C does."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().endswith("vivi: interrupted; re-run the same command to resume")


def test_ingest_shard_mb_0_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(tmp_path), str(tmp_path / "out"), "--shard-mb", "0"])
    assert info.value.code == 2
    assert "argument --shard-mb: '0': expected a number > 0" in capsys.readouterr().err


def _stats(reasons: int) -> DatasetStats:
    skipped = Counter({f"reason {i}": 10 - i for i in range(reasons)})
    return DatasetStats(folders=1, reasons={"ok": Counter(), "skipped": skipped, "error": Counter()})


def test_ingest_stats_shows_a_lone_hidden_reason_and_counts_the_rest_in_words():
    six = format_stats(_stats(6))
    assert "reason 5" in six and "other reason" not in six  # "(1 other reasons)" took the line it would
    seven = format_stats(_stats(7))
    assert "reason 4" in seven and "reason 5" not in seven and "(2 other reasons)" in seven


def test_one_video_is_singular():
    summary = IngestSummary(videos_ok=1)
    assert str(summary).startswith("Ingested 1 video: 1 ok")
    assert str(IngestSummary(videos_ok=2)).startswith("Ingested 2 videos: ")


@pytest.mark.parametrize("flag, value, message", [
    ("--fps", "inf", "fps=inf: must be a finite number, at least 1e-06"),
    ("--fps", "nan", "fps=nan: must be a finite number, at least 1e-06"),
    ("--timeout", "nan", "timeout=nan: must be a positive, finite number of seconds"),
])  # fmt: skip
def test_ingest_refuses_non_finite_rates_before_writing_anything(tmp_path, capsys, flag, value, message):
    """--fps inf passed the check, failed every video with a traceback and wrote fps=Infinity."""
    (tmp_path / "videos").mkdir()
    assert main(["ingest", str(tmp_path / "videos"), str(tmp_path / "out"), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"vivi: error: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seed", str(2**63)], ["--set", "seed=-1"]])
def test_pretrain_refuses_a_seed_the_generators_cannot_take_before_making_the_run(tmp_path, capsys, args):
    """--seed -1 was a numpy traceback after the run folder had been created."""
    cmd = ["pretrain", "--preset", "Ex-YT-F", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *args]
    if args[0] == "--seed":
        with pytest.raises(SystemExit) as info:
            main(cmd)
        assert info.value.code == 2
        assert f"argument --seed: '{args[1]}': expected a number from 0 to {2**63 - 1}" in capsys.readouterr().err
    else:
        assert main(cmd) == 2
        assert f"vivi: error: seed=-1: expected an integer from 0 to {2**63 - 1}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device, message", [
    ("nonsense", "unknown device"),
    ("meta", "vivi runs on cpu, cuda or mps"),
] + ([] if torch.cuda.is_available() else [("cuda", "CUDA is not available on this machine")]))  # fmt: skip
def test_evaluate_device_is_checked_before_any_weights_are_read(capsys, device, message):
    """--device cuda without a GPU was a traceback from safetensors; a typo blamed the weights file."""
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent", "--device", device])
    assert info.value.code == 2
    assert f"argument --device: '{device}': {message}" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_error_every_rank_raises_is_said_once(rank, monkeypatch, capsys):
    """Under torchrun a requested stop or a NaN loss is raised alike by every process: rank 0 says it,
    the others exit with the same code quietly; an error of one rank's own is said by that rank."""
    from vivi.errors import JobError, UserError
    from vivi.evaluate import encoders

    monkeypatch.setenv("RANK", rank)
    for error, said_by_every_rank in ((JobError("step 3: non-finite loss"), False), (UserError("a.mp4: bad"), True)):
        def fail(*args: object, error: Exception = error, **kwargs: object) -> None:
            raise error

        monkeypatch.setattr(encoders, "load_encoder", fail)
        assert main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert err == (f"vivi: error: {error}\n" if rank == "0" or said_by_every_rank else "")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_pretrain_on_mps_without_mps_is_one_line(tiny_data, tmp_path, capsys):
    """--set device=mps on a machine without Apple silicon was torch's traceback at the first tensor."""
    cmd = ["pretrain", "--preset", "Ex-YT-F", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
           "--set", "device=mps"]
    assert main(cmd) == 2
    assert "vivi: error: device='mps' requested but MPS (Apple silicon) is not available" in capsys.readouterr().err


def test_a_flag_and_a_set_of_the_same_setting_are_refused(capsys):
    """`--steps 3 --set optim.steps=5` trained 3 steps while the warning read "5, then 3"."""
    code = main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", "/nonexistent", "--out", "/nonexistent/run",
                 "--steps", "3", "--set", "optim.steps=5"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "vivi: error: --steps 3 and --set optim.steps=5: the same setting twice; give one"


def test_evaluate_seed_of_a_trained_model_is_refused(capsys):
    """--seed was silently ignored for a run or a weights file (it seeds random encoders only)."""
    assert main(["evaluate", "/nonexistent/run", "--task", "mini-vtab", "--seed", "3"]) == 2
    assert "--seed 3: seeds a random encoder only" in capsys.readouterr().err


@pytest.mark.parametrize("peer", [True, False], ids=["peer-stopped", "other-error"])
def test_an_interrupt_during_teardown_does_not_hide_that_a_peer_stopped(monkeypatch, capsys, peer):
    """Under torchrun, a process whose peer died raises PeerStopped (naming the checkpoint to resume from),
    and torchrun's SIGTERM reaches it while that error unwinds: the user saw only "interrupted" (130)."""
    from vivi.train.distributed import PeerStopped

    error = PeerStopped("another process of this run stopped; last good checkpoint: R/step_2.pt") if peer else (
        UserError("a file it could not read, handled below"))  # fmt: skip

    def command(a):
        try:
            raise error
        finally:
            raise KeyboardInterrupt  # torchrun's SIGTERM, arriving in the teardown

    monkeypatch.setattr(cli, "_presets", command)
    code = main(["presets"])
    err = capsys.readouterr().err
    if peer:
        assert (code, err.strip()) == (error.exit_code, f"vivi: {error.prefix}{error}")
    else:
        assert (code, err.strip()) == (130, "vivi: interrupted; re-run the same command to resume")


def test_pretrain_refuses_a_folder_that_an_ingest_is_still_writing(tiny_data, tmp_path, capsys):
    """A run on a folder being ingested took the videos indexed so far and could never resume once the
    ingest had added more (its data changed)."""
    from vivi.folder_lock import lock_folder

    with lock_folder(tiny_data, "ingest", "written"):
        code = main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                     "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tiny_data} is being written by a vivi ingest (pid " in err and "train on it once that ingest" in err
    assert not (tmp_path / "run").exists()


def test_curate_refuses_a_list_inside_an_ingest_folder(tiny_data, capsys):
    """`vivi curate D ... -o D/index.jsonl` replaced the ingest's index with a list of paths."""
    before = (tiny_data / "index.jsonl").read_bytes()
    code = main(["curate", str(tiny_data), "--classifier", "random:tiny", "--labelled", "imagefolder:/nonexistent",
                 "-o", str(tiny_data / "index.jsonl")])
    assert code == 2 and "is inside the ingest folder" in capsys.readouterr().err
    assert (tiny_data / "index.jsonl").read_bytes() == before
