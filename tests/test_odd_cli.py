"""Odd command-line inputs found by a user's test session: each once produced a traceback, a wrong
model, or lost results without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vivi.cli import main
from vivi.config import preset


def _backbone(path: Path) -> Path:
    from vivi.models.backbone import build_backbone, save_backbone

    spec = preset("VIVI-Ex(4)", "tiny").model.backbone
    save_backbone(build_backbone(spec), spec, path, extra={"image_size": "64"})
    return path


def test_a_file_named_random_something_is_that_file_not_a_random_encoder(tmp_path, monkeypatch):
    from vivi.evaluate.encoders import load_encoder

    monkeypatch.chdir(tmp_path)  # as typed in the folder that holds it
    _backbone(tmp_path / "randomized.safetensors")
    enc = load_encoder("randomized.safetensors")
    assert enc.name == "randomized"  # was "random-tiny": an untrained encoder evaluated in its place
    assert load_encoder("random").name == "random-tiny"


def _timm_weights(tmp_path: Path, edit) -> Path:
    import timm
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items()}
    edit(state)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    return path


def test_timm_weights_of_another_shape_are_one_line_not_a_traceback(tmp_path, capsys):
    path = _timm_weights(tmp_path, lambda s: s.__setitem__("conv1.weight", torch.zeros(32, 3, 7, 7)))
    assert main(["evaluate", f"timm:resnet18:{path}", "--task", "imagefolder:/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "conv1.weight" in err and "Traceback" not in err


def test_timm_weights_holding_nan_are_refused_naming_the_tensor(tmp_path, capsys):
    def poison(state):
        state["bn1.weight"][0] = float("nan")

    path = _timm_weights(tmp_path, poison)
    assert main(["evaluate", f"timm:resnet18:{path}", "--task", "imagefolder:/nonexistent"]) == 2
    assert "'bn1.weight' holds NaN" in capsys.readouterr().err


def _result(model: str, task: str, weights: str) -> dict:
    entry = {"task": task, "group": "custom", "protocol": "linear", "accuracy": 50.0}
    return {"model": model, "protocol": "linear", "image_size": 32, "weights": weights, "tasks": [entry]}


def test_report_keeps_two_models_of_one_name_apart(tmp_path):
    from vivi.evaluate.report import merge_results

    rows = merge_results([_result("resnet18", "a", "1111"), _result("resnet18", "b", "2222")])
    assert len(rows) == 2  # was one row: each model's task passed for the other's
    assert len(merge_results([_result("m", "a", "1111"), _result("m", "b", "1111")])) == 1


def test_robustness_does_not_overwrite_other_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text(json.dumps(_result("random-tiny", "IF", "1111")))
    before = out.read_text()
    assert main(["evaluate", "random:tiny", "--task", "world:/nonexistent", "--protocol", "robustness",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "holds linear results" in capsys.readouterr().err
    assert out.read_text() == before


def test_study_refuses_an_empty_protocol_list_and_a_variant_seed(tmp_path, capsys):
    assert main(["study", "-o", str(tmp_path / "s"), "--quick", "--protocols", ","]) == 2
    assert main(["study", "-o", str(tmp_path / "s"), "--quick", "--models", "VIVI-Ex(4)@seed=5"]) == 2
    err = capsys.readouterr().err
    assert "no protocol given" in err and "cannot set seed" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv", [["demo", "--seeds", "0"], ["demo", "--videos", "0"], ["demo", "--steps", "-5"],
                                  ["curate", "D", "--classifier", "R", "-o", "L", "--frames", "0"]])  # fmt: skip
def test_counts_that_cannot_work_are_refused_before_any_work(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, *(["--out", str(tmp_path / "d")] if argv[0] == "demo" else [])])
    assert e.value.code == 2
    assert not (tmp_path / "d").exists()


def test_a_torn_last_metrics_row_is_left_out_on_resume_and_in_the_report(tiny_data, tmp_path, capsys, one_thread):
    """A power loss mid-write leaves half a row at the end of metrics.jsonl: the resume stopped with a
    JSON traceback in trim_metrics, and `vivi report` refused the run."""
    from vivi.evaluate.report import load_metrics
    from vivi.train.checkpoint import list_checkpoints

    run = tmp_path / "run"
    settings = ["data.videos=2", "optim.lr=0.05", "data.workers=0", "optim.steps=4", "ckpt_every=2", "log_every=1"]
    argv = ["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(tiny_data), "--out", str(run),
            *[arg for s in settings for arg in ("--set", s)]]  # fmt: skip
    assert main(argv) == 0
    list_checkpoints(run)[-1].unlink()  # the crash came after step 3's row, before step 4's checkpoint
    (run / "backbone.safetensors").unlink()
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]) + '{"loss": 0.5, "st')

    capsys.readouterr()
    assert [r["step"] for r in load_metrics(run)] == [1, 2, 3]
    assert capsys.readouterr().err == f"vivi: warning: {metrics}: its last line was cut short (the run stopped " \
                                      "while writing it); left out\n"  # fmt: skip
    assert main(argv) == 0
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize(("flags", "protocol", "named"), [(["--head", "--k", "3"], "linear", "--k and --head"),
                                                          (["--lr", "0.5"], "knn", "--lr"),
                                                          (["--steps", "5"], "robustness", "--steps")])  # fmt: skip
def test_a_setting_the_protocol_does_not_use_is_refused_not_ignored(flags, protocol, named, capsys):
    """`evaluate ... --protocol linear --head --k 3 --lr 0.5` ran a linear probe and said nothing of them."""
    assert main(["evaluate", "random:tiny", "--task", "mini-vtab:object", "--protocol", protocol, *flags]) == 2
    assert capsys.readouterr().err == (f"vivi: error: {named}: not used by --protocol {protocol} (--lr and --steps "
                                       "set finetune, --k and --head robustness)\n")  # fmt: skip


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`vivi presets --json | head -1` ended in a BrokenPipeError traceback once head had what it wanted."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "vivi", "presets", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""


@pytest.fixture
def tiny_run(tiny_data, tmp_path, one_thread) -> Path:
    run = tmp_path / "run"
    settings = ["data.videos=2", "optim.lr=0.05", "data.workers=0", "optim.steps=1"]
    assert main(["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(tiny_data), "--out", str(run),
                 *[arg for s in settings for arg in ("--set", s)]]) == 0  # fmt: skip
    return run


def test_head_on_a_run_without_one_says_what_evaluate_offers(tiny_run, tiny_world, capsys):
    """It suggested --labelled, an option of curate and pretrain that evaluate does not have."""
    run = tiny_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--task", f"world:{tiny_world}", "--protocol", "robustness", "--head"]) == 2
    assert capsys.readouterr().err == (f"vivi: error: {run}: has no classification head (not co-trained); leave out "
                                       "--head to score it with a probe\n")  # fmt: skip


def test_a_damaged_or_edited_run_config_is_one_line(tiny_run, tiny_data, tmp_path, capsys):
    """vivi attention and curate (load_run_model) gave a JSONDecodeError or a load_state_dict traceback."""
    config = tiny_run / "config.json"
    good = config.read_text()
    frames = tmp_path / "frames"
    frames.mkdir()
    capsys.readouterr()
    config.write_text(good[: len(good) // 2])
    assert main(["attention", str(tiny_run), str(frames), "-o", str(tmp_path / "att")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vivi: error: {config}: not a vivi run config (") and err.count("\n") == 1
    edited = json.loads(good)
    edited["model"]["video_dim"] = 64  # the heads the checkpoint holds are 512 wide
    config.write_text(json.dumps(edited))
    assert main(["curate", str(tiny_data), "--classifier", str(tiny_run), "-o", str(tmp_path / "list.txt")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "was config.json edited after training?" in err and err.count("\n") == 1


def test_curate_refuses_a_folder_as_its_list_before_scoring(tiny_run, tiny_data, tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    capsys.readouterr()
    assert main(["curate", str(tiny_data), "--classifier", str(tiny_run), "-o", str(tmp_path / "adir")]) == 2
    assert capsys.readouterr().err == (f"vivi: error: -o {tmp_path / 'adir'}: is a folder; -o names the list file "
                                       f"to write, e.g. {tmp_path / 'adir' / 'selected.txt'}\n")  # fmt: skip
