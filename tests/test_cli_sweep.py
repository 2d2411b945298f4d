"""Odd arguments to the commands after ingest: each gives one line naming the value and the reason
(exit 2), never a traceback or silently different work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vivi.cli import main
from vivi.config import apply_overrides, preset
from vivi.errors import UserError


def _overrides(*items: str):
    return apply_overrides(preset("VIVI-Ex(4)", "tiny"), list(items))


@pytest.mark.parametrize("item", ["to_dict=3", "shots_per_batch=3", "data.__class__=3"])
def test_set_takes_fields_not_methods_or_properties(item):
    """`--set to_dict=3` replaced the method and failed later with a TypeError traceback."""
    with pytest.raises(UserError, match="unknown setting"):
        _overrides(item)


@pytest.mark.parametrize("item", ["model.backbone.layers=[1,[2]]", "model.backbone.layers=[1.5,2]",
                                  "model.backbone.layers=[null]", "augment.crop_scale=[true,1]"])  # fmt: skip
def test_set_list_items_of_the_wrong_kind_are_named(item):
    """A nested list was `int([2])`'s TypeError traceback; 1.5 became 1 silently."""
    with pytest.raises(UserError, match=r"expected a list of (whole numbers|numbers)"):
        _overrides(item)


@pytest.mark.parametrize(
    ("items", "named"),
    [
        (["model.backbone.layers="], "model.backbone.layers=[]"),  # trained a stem alone
        (["model.backbone.layers=1,1"], "one block count and one channel count per stage"),  # dropped 2 stages
        (["model.backbone.channels=8"], "one block count and one channel count per stage"),
        (["model.backbone.layers=0,0,0,0"], "model.backbone.layers=[0, 0, 0, 0]: expected counts >= 1"),
        (["model.backbone.norm=foo"], "model.backbone.norm='foo'"),  # found only after the data was read
        (["model.pooling=attention", "model.attention_stages=7"], "model.attention_stages=[7]"),
        (["augment.crop_scale=2,1"], "augment.crop_scale=[2.0, 1.0]"),  # fell back to the whole frame
        (["augment.crop_ratio=0,1"], "augment.crop_ratio=[0.0, 1.0]"),
        (["augment.crop_scale=0.5"], "augment.crop_scale=[0.5]"),
        (["device=gpu"], "device='gpu': expected auto, cpu, cuda, cuda:N or mps"),  # torch's traceback
    ],
)
def test_set_values_that_cannot_train_are_refused_before_the_data(items, named):
    with pytest.raises(UserError) as info:
        _overrides(*items)
    assert named in str(info.value)


def test_set_values_that_can_train_still_pass():
    cfg = _overrides("model.backbone.layers=2,1", "model.backbone.channels=[16, 32]", "model.pooling=attention",
                     "model.attention_stages=1,2", "device=cuda:1", "augment.crop_scale=0.2,1")  # fmt: skip
    assert cfg.model.backbone.layers == [2, 1] and cfg.model.backbone.channels == [16, 32]
    assert cfg.augment.crop_scale == [0.2, 1.0] and cfg.device == "cuda:1"


def _pretrain(data: Path, out: Path) -> list[str]:
    return ["pretrain", "--preset", "Ex-YT-F", "--data", str(data), "--out", str(out), "--steps", "1"]


def test_pretrain_refuses_to_write_a_run_into_its_data_and_warns_of_a_folder_of_other_files(tmp_path, capsys):
    """`--out DATA` wrote checkpoints, tb/ and backbone.safetensors into the ingested folder. A folder
    of other files is only warned of (a job's log often lands in its run folder before the run)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "index.jsonl").write_text("")
    assert main(_pretrain(data, data)) == 2
    assert "is also the training data" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_pretrain(data, other)) == 2  # the (empty) data stops it, after the warning
    err = capsys.readouterr().err
    assert err.startswith(f"vivi: warning: --out {other}: holds other files (notes.txt) and no vivi run yet; ")
    assert "no ingested videos" in err and (other / "notes.txt").read_text() == "mine"


def test_pretrain_suggests_the_preset_that_differs_only_in_case(capsys):
    assert main(["presets", "vivi-ex(4)"]) == 2
    assert "did you mean 'VIVI-Ex(4)'?" in capsys.readouterr().err
    assert main(["presets", "VIVI-Ex(4)-AA+Attn"]) == 2  # the suffixes in the other order
    assert "did you mean 'VIVI-Ex(4)+Attn-AA'?" in capsys.readouterr().err
    assert main(["presets", "VITO", "--scale", "Paper"]) == 2
    assert "did you mean 'paper'?" in capsys.readouterr().err


@pytest.mark.parametrize(("out", "said"), [("", "--out '': expected a results file name"), (".", "is a folder")])
def test_evaluate_out_must_name_a_file(out, said, capsys):
    """`--out ''` evaluated everything and wrote it nowhere; a folder was "Is a directory" after loading."""
    assert main(["evaluate", "random:tiny", "--task", "imagefolder:/nonexistent", "--out", out]) == 2
    assert said in capsys.readouterr().err


def _backbone(tmp_path: Path, state_edit=None, spec_edit=None) -> Path:
    from vivi.models.backbone import build_backbone, save_backbone

    spec = preset("VIVI-Ex(4)", "tiny").model.backbone
    model = build_backbone(spec)
    if state_edit:
        state_edit(model)
    path = tmp_path / "backbone.safetensors"
    save_backbone(model, spec, path, extra={"image_size": "64"})
    return path


def test_evaluate_refuses_weights_holding_nan_by_tensor_name(tmp_path):
    """NaN weights made NaN features, and the probe failed with scikit-learn's traceback."""
    from vivi.models.backbone import load_backbone

    path = _backbone(tmp_path, lambda m: m.stem.conv.weight.data.__setitem__(0, float("nan")))
    with pytest.raises(UserError, match=r"tensor 'stem.conv.weight' holds NaN or inf"):
        load_backbone(path)


class _Split:
    def __len__(self) -> int:
        return 4

    def images(self, indices, size: int) -> torch.Tensor:
        return torch.zeros(len(indices), 3, size, size, dtype=torch.uint8)


def test_non_finite_features_are_a_user_error_naming_the_split():
    from vivi.evaluate.features import extract_features

    class Overflow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3), float("inf"))

    with pytest.raises(UserError, match="object/train: the model's features hold NaN or inf"):
        extract_features(Overflow(), _Split(), 8, progress=False, desc="object/train")
    assert np.isfinite(extract_features(torch.nn.Flatten(), _Split(), 8, progress=False)).all()


def test_foreign_weights_name_the_missing_and_unexpected_tensors(tmp_path):
    """The reason was torch's heading alone: "(Error(s) in loading state_dict for ResNetV2:)"."""
    from safetensors.torch import save_file

    from vivi.models.backbone import FORMAT, load_backbone

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": FORMAT, "backbone": "{}"})
    with pytest.raises(UserError, match=r"missing \d+ tensors, e.g. .+; unexpected 1, e.g. w\)"):
        load_backbone(path)


@pytest.mark.parametrize(
    ("text", "said"),
    [("", "is empty"), ("null", "got null"), ("[]", "got a list"), ("{}", "an object without 'tasks'"),
     ('{"tasks": [', "not valid JSON")],  # fmt: skip
)
def test_report_says_what_is_wrong_with_a_results_file(tmp_path, text, said, capsys):
    """The reasons were Python's: "('tasks')", "list indices must be integers or slices, not str"."""
    bad = tmp_path / "r.json"
    bad.write_text(text)
    assert main(["report", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_report_of_a_folder_says_to_pass_its_files(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "is a folder; pass the results files in it" in capsys.readouterr().err


def _result(model: str, accuracy: float) -> dict:
    return {"model": model, "protocol": "linear", "tasks": [{"task": "object", "group": "natural", "accuracy": accuracy}],
            "groups": {"natural": accuracy}, "mean": accuracy}  # fmt: skip


def test_report_keeps_every_difference_plot_and_escapes_pipes(tmp_path):
    """Labels that slug alike (a repeat, names without ASCII letters) shared one diff PNG, the later
    overwriting the earlier; a "|" in a name split its table cell."""
    from vivi.evaluate.report import write_report

    results = [_result("base", 10.0), _result("模型", 20.0), _result("モデル", 30.0), _result("a|b", 40.0)]
    md, _ = write_report(results, tmp_path)
    text = md.read_text(encoding="utf-8")
    diffs = sorted(p.name for p in tmp_path.glob("diff-*.png"))
    assert len(diffs) == 3 and all(f"({d})" in text for d in diffs)
    assert "| a\\|b " in text


def test_study_refuses_other_steps_in_the_same_folder(tmp_path):
    """`vivi study -o q --steps 30` after a 20-step study reused the 20-step runs and results and
    reported them as 30-step ones (study.json was overwritten)."""
    from dataclasses import asdict

    from vivi.study import check_same_study, study_size

    (tmp_path / "study.json").write_text(json.dumps(asdict(study_size("quick"))))
    check_same_study(tmp_path, study_size("quick", seeds=3, models="Ex-YT-F"))  # more seeds, fewer models: fine
    with pytest.raises(UserError, match=r"steps=20 there, 30 now"):
        check_same_study(tmp_path, study_size("quick", steps=30))


def test_study_checks_protocols_and_counts_before_any_work(tmp_path, capsys):
    from vivi.study import run_study, study_size

    with pytest.raises(UserError, match="--protocols lin: unknown protocol"):
        run_study(tmp_path / "s", study_size("quick", protocols="lin"))
    assert not (tmp_path / "s").exists()
    for flag in ("--seeds", "--steps"):  # 0 was read as "the default"; -3 passed and was reported
        with pytest.raises(SystemExit) as info:
            main(["study", "--quick", "-o", str(tmp_path / "s"), flag, "0"])
        assert info.value.code == 2 and "expected a number > 0" in capsys.readouterr().err


SIGTERM_DURING_STUDY = """
import os, signal, sys, time
import vivi.study

def studying(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # as a batch system's time limit would, mid-evaluation
    time.sleep(30)

vivi.study.run_study = studying
from vivi.cli import main
sys.exit(main(["study", "--quick", "-o", sys.argv[1]]))
"""


def test_sigterm_stops_study_with_the_resume_line(tmp_path):
    """SIGTERM outside a pretraining step killed `vivi study` silently."""
    done = subprocess.run([sys.executable, "-c", SIGTERM_DURING_STUDY, str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().endswith("vivi: interrupted; re-run the same command to resume")


def test_ingest_stats_and_attention_check_their_options_first(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["ingest-stats", str(tmp_path), "-o", str(afile)]) == 2  # was "afile: File exists", after reading
    assert f"{afile}: exists and is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["attention", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "att"), "--max", "0"])
    assert info.value.code == 2 and "expected a number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["mini-vtab:", "mini-vtab: , "])
def test_a_task_list_with_no_task_is_refused(spec):
    """`--task mini-vtab:` (a list left empty) evaluated all ten tasks."""
    from vivi.data.tasks import load_tasks

    with pytest.raises(UserError, match="no task named after the colon"):
        load_tasks(spec)
