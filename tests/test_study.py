"""The study's report: medians over seeds, spreads, and the paper's claims checked by hand-made numbers."""

from __future__ import annotations

from vivi.study import check_claims, model_rows


def _result(mean: float, task_acc: dict[str, float], groups: dict[str, float]) -> dict:
    return {"mean": mean, "groups": groups, "tasks": [{"task": t, "accuracy": a} for t, a in task_acc.items()]}


def test_medians_spreads_and_claims():
    per_model = {
        "Ex-YT-F": [_result(m, {"a": m}, {"natural": m}) for m in (40.0, 42.0, 41.0)],
        "Ex-YT-S": [_result(m, {"a": m}, {"natural": m}) for m in (44.0, 43.0, 47.0)],  # median 44, spread 4
        "VIVI-Ex(4)": [_result(m, {"a": m}, {"natural": m}) for m in (45.0, 45.5, 44.5)],  # median 45
    }
    rows = model_rows(per_model)
    assert [(r["model"], r["median"], r["spread"]) for r in rows] == [
        ("Ex-YT-F", 41.0, 2.0), ("Ex-YT-S", 44.0, 4.0), ("VIVI-Ex(4)", 45.0, 1.0)
    ]
    assert rows[1]["tasks"] == {"a": 44.0} and rows[1]["groups"] == {"natural": 44.0}
    checks = {c["claim"]: c for c in check_claims(rows)}
    assert checks["Ex-YT-S > Ex-YT-F"]["holds"] is False  # +3 does not beat a spread of 4
    assert checks["VIVI-Ex(4) > Ex-YT-S"]["difference"] == 1.0 and not checks["VIVI-Ex(4) > Ex-YT-S"]["holds"]
    assert checks["VIVI-Ex(4) > Ex-YT-S"]["per_seed"] == [1.0, 2.5, -2.5]  # seed i against seed i
    assert "VIVI-Rot(4) > Rot-YT-F" not in checks, "claims about models not in the study are left out"
    per_model["Ex-YT-F"] = [_result(m, {"a": m}, {"natural": m}) for m in (30.0, 31.0, 30.5)]
    checks = {c["claim"]: c for c in check_claims(model_rows(per_model))}
    assert checks["Ex-YT-S > Ex-YT-F"]["holds"] is True  # +13.5 beats the spread of 4


def test_run_order_puts_claim_pairs_first_and_keeps_every_model_once() -> None:
    from vivi.study import CLAIMS, STUDY_MODELS, run_order

    order = run_order(STUDY_MODELS, ("VIVI-Ex(4)-Co(10%)", "Sup-ImageNet"))
    assert sorted(order) == sorted({*STUDY_MODELS, "Sup-ImageNet"})
    claim_models = {m for pair in CLAIMS for m in pair}
    assert set(order[: len(claim_models)]) == claim_models
    assert order.index("Ex-YT-F") < order.index("Ex-YT-S") < order.index("VIVI-Ex(4)")
    assert order[len(claim_models):len(claim_models) + 4] == ["VIVI-Ex(4)-Co(10%)", "Sup-ImageNet", "VITO", "VIVI-Ex(4)+Attn"]
    assert run_order(("VIVI-Ex(2)", "Ex-YT-S")) == ["Ex-YT-S", "VIVI-Ex(2)"]


def test_report_is_marked_partial_until_every_run_is_done(tmp_path):
    from vivi.study import SIZES, write_study_report

    results = {"linear": {"Ex-YT-F": [_result(m, {"a": m}, {"natural": m}) for m in (40.0, 42.0, 41.0)]}}
    text = write_study_report(tmp_path, SIZES["default"], results, {}, 60.0, runs_done=(3, 33)).read_text()
    assert "PARTIAL: 3 of 33 runs done" in text and "| Ex-YT-F | 41.0 |" in text
    results["linear"]["Ex-YT-S"] = [_result(m, {"a": m}, {"natural": m}) for m in (41.5, 42.5, 40.0)]
    text = write_study_report(tmp_path, SIZES["default"], results, {}, 60.0, runs_done=(6, 33)).read_text()
    assert "- Ex-YT-S > Ex-YT-F: +0.5 points vs spread 2.5 -> **does NOT hold** (seed by seed: +1.5, +0.5, -1.0)" in text
    text = write_study_report(tmp_path, SIZES["default"], results, {}, 60.0, runs_done=(33, 33)).read_text()
    assert "PARTIAL" not in text and (tmp_path / "study_summary.json").is_file()


def test_report_sums_the_wall_time_of_every_timed_run(tmp_path):
    from vivi.study import SIZES, _log_time, write_study_report

    _log_time(tmp_path, "Ex-YT-F", 0, 100.0)
    _log_time(tmp_path, "Ex-YT-F", 0, 3.0)  # nothing left to do: not a run's time
    _log_time(tmp_path, "Ex-YT-F", 1, 1700.0)  # stopped half-way ...
    _log_time(tmp_path, "Ex-YT-F", 1, 1800.0)  # ... and resumed: both parts count
    text = write_study_report(tmp_path, SIZES["default"], {}, {}, 60.0).read_text()
    assert "Wall time: 1.00 h for the 2 runs timed" in text


def test_a_study_rebuilt_from_result_files_trains_only_what_they_lack(tmp_path, monkeypatch):
    """Committed results (no backbones) resume a study: complete runs are read, not retrained; a
    run whose evaluation stopped part-way, or with no file, trains (here: a stub that says so)."""
    import json
    from types import SimpleNamespace

    import vivi.data.tasks
    import vivi.study as study

    size = study.StudySize(8, 5, 2, ("linear",), "tasks", 10, "world", models=("Ex-YT-F", "VIVI-Ex(4)-Co(10%)"))
    tasks = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    complete = {"mean": 50.0, "groups": {"natural": 50.0}, "tasks": [{"task": "a", "accuracy": 50.0}, {"task": "b", "accuracy": 50.0}]}
    for name, seed, res in (("Ex-YT-F", 0, complete), ("Ex-YT-F", 1, {**complete, "tasks": complete["tasks"][:1]}),
                            ("VIVI-Ex(4)-Co(10%)", 0, complete)):
        study.result_path(tmp_path, "linear", name, seed).parent.mkdir(parents=True, exist_ok=True)
        study.result_path(tmp_path, "linear", name, seed).write_text(json.dumps(res))
    rob = study.result_path(tmp_path, "robustness", "Sup-ImageNet", 0)
    rob.parent.mkdir(parents=True)
    rob.write_text(json.dumps({"tasks": [{"anchor_accuracy": 20.0, "pmk_accuracy": 10.0}]}))
    trained = []
    monkeypatch.setattr(study, "prepare_data", lambda out, size: (out, out))
    monkeypatch.setattr(vivi.data.tasks, "load_tasks", lambda spec, cache: tasks)
    monkeypatch.setattr(study, "train", lambda name, seed, *a: trained.append((name, seed)) or tmp_path)
    monkeypatch.setattr(study, "evaluate_run", lambda run, name, seed, p, t, out: complete)
    monkeypatch.setattr(study, "robustness", lambda run, name, seed, spec, out: {"tasks": [{"anchor_accuracy": 1.0, "pmk_accuracy": 0.0}]})
    study.run_study(tmp_path, size)
    assert trained == [("Ex-YT-F", 1), ("VIVI-Ex(4)-Co(10%)", 0), ("VIVI-Ex(4)-Co(10%)", 1), ("Sup-ImageNet", 1)]
    # Co(10%) seed 0 had its linear results but not its robustness: it trains; Sup-ImageNet seed 0 had both
    assert "PARTIAL" not in (tmp_path / "report.md").read_text()


def test_a_model_variant_changes_only_its_own_settings_and_names_a_bad_one() -> None:
    import pytest

    from vivi.config import preset
    from vivi.errors import UserError
    from vivi.study import model_config, study_size

    cfg = model_config("VIVI-Ex(4)@loss.video_weight=0.3@data.videos=4", ["optim.steps=50"])
    base = preset("VIVI-Ex(4)", "tiny")
    assert (cfg.loss.video_weight, cfg.data.videos, cfg.optim.steps) == (0.3, 4, 50)
    assert cfg.loss.frame_loss == base.loss.frame_loss and cfg.data.shots == base.data.shots
    assert model_config("VIVI-Ex(4)").loss.video_weight == base.loss.video_weight
    with pytest.raises(UserError, match=r"--models VIVI-Ex\(4\)@loss.nope=1: .*unknown setting"):
        model_config("VIVI-Ex(4)@loss.nope=1")
    with pytest.raises(UserError, match="expected PRESET@section.field=value"):
        model_config("VIVI-Ex(4)@0.3")
    models = study_size("quick", models="Ex-YT-S, VIVI-Ex(4)@optim.decay_steps=[10,15],VITO").models
    assert models == ("Ex-YT-S", "VIVI-Ex(4)@optim.decay_steps=[10,15]", "VITO")
    assert model_config(models[1]).optim.decay_steps == [10, 15]


def test_the_robustness_pair_trains_only_in_a_study_that_co_trains() -> None:
    from vivi.study import robustness_pair, study_size

    assert robustness_pair(study_size("default")) == ("VIVI-Ex(4)-Co(10%)", "Sup-ImageNet")
    assert robustness_pair(study_size("default", models="Ex-YT-S,VIVI-Ex(4)@loss.video_weight=1")) == ()
    assert robustness_pair(study_size("default", models="VIVI-Ex(4)-Co(10%)")) == ("VIVI-Ex(4)-Co(10%)", "Sup-ImageNet")


def test_report_compares_each_variant_with_its_own_preset(tmp_path):
    from vivi.study import SIZES, variant_pairs, write_study_report

    names = ["VIVI-Ex(4)", "VIVI-Ex(4)@loss.video_weight=1", "VIVI-Ex(2)@loss.video_weight=1"]
    assert variant_pairs(names) == [("VIVI-Ex(4)", "VIVI-Ex(4)@loss.video_weight=1")], "a variant without its preset: none"
    results = {"linear": {
        "VIVI-Ex(4)": [_result(m, {"a": m}, {"natural": m}) for m in (40.0, 41.0, 42.0)],
        "VIVI-Ex(4)@loss.video_weight=1": [_result(m, {"a": m}, {"natural": m}) for m in (37.0, 37.5, 38.5)],
        "VIVI-Ex(4)@loss.video_weight=0.3": [_result(m, {"a": m}, {"natural": m}) for m in (41.0, 40.0, 43.0)],
    }}
    text = write_study_report(tmp_path, SIZES["default"], results, {}, 60.0).read_text()
    assert ("- VIVI-Ex(4)@loss.video_weight=1 vs VIVI-Ex(4): -3.5 points vs spread 2.0 -> **lower** "
            "(seed by seed: -3.0, -3.5, -3.5)") in text
    assert "- VIVI-Ex(4)@loss.video_weight=0.3 vs VIVI-Ex(4): +0.0 points vs spread 3.0 -> **within the spread**" in text
