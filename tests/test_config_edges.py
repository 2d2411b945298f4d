"""`--set` values as a user types them by hand: each bad one is one line naming the setting and the
reason, before any data is read; a legal one means what it says."""

import re

import pytest

from vivi.config import apply_overrides, preset
from vivi.errors import UserError


def _set(*items: str, name: str = "VIVI-Ex(4)"):
    return apply_overrides(preset(name), list(items))


def _refused(*items: str, name: str = "VIVI-Ex(4)") -> str:
    with pytest.raises(UserError) as info:
        _set(*items, name=name)
    return str(info.value)


def test_counts_take_whole_numbers_written_as_floats():
    """`optim.steps=1e3` was "expected a value of type int" (while `layers=[1e0,...]` was taken)."""
    assert _set("optim.steps=1e3").optim.steps == 1000
    assert _set("optim.steps=1000.0").optim.steps == 1000
    assert _refused("optim.steps=2.5") == "--set optim.steps=2.5: expected a whole number"
    assert "expected a value of type int" in _refused("optim.steps=many")


def test_a_flag_takes_spaces_around_its_word_as_a_number_does():
    assert _set("augment.flip= false ").augment.flip is False  # `optim.steps= 10` was already taken


def test_a_list_takes_the_item_type_its_field_declares():
    """The item type was read off the current value: an empty list took floats."""
    assert _set("model.class_names=cat,dog").model.class_names == ["cat", "dog"]
    assert "expected a list of whole numbers" in _refused("optim.decay_steps=", "optim.decay_steps=300.5")
    assert _set("optim.decay_steps=").optim.decay_steps == []  # no decay at all: legal
    # an empty item silently made the list one item shorter than typed
    assert "expected a list of numbers" in _refused("augment.crop_scale=0.2,,1")


def test_steps_rescale_the_schedule_settings_not_given():
    """A warm-up given with fewer steps kept the preset's milestones [300, 367] past a 100-step run."""
    o = _set("optim.steps=100", "optim.warmup_steps=5").optim
    assert (o.warmup_steps, o.decay_steps) == (5, [75, 92])
    o = _set("optim.decay_steps=50,80", "optim.steps=100").optim
    assert (o.warmup_steps, o.decay_steps) == (4, [50, 80])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["optim.steps=100", "optim.warmup_steps=500"], "optim.warmup_steps=500 is longer than optim.steps=100"),
        (["optim.steps=100", "optim.decay_steps=50,500"], "optim.decay_steps=[50, 500]: 500 is past the run's optim.steps=100"),
        (["optim.decay_steps=-5"], "optim.decay_steps=[-5]: expected steps from 0 to optim.steps=400"),
        (["optim.warmup_steps=-5"], "optim.warmup_steps=-5: expected >= 0"),
        (["optim.decay_factor=0"], "optim.decay_factor=0.0: expected a factor in (0, 1]"),
        (["optim.momentum=1.5"], "optim.momentum=1.5: expected a value in [0, 1)"),
        (["optim.steps=1e10"], "optim.steps=10000000000: expected at most 10,000,000"),  # out of memory after the data
    ],
)
def test_a_schedule_the_run_would_not_follow_is_refused(items, message):
    assert _refused(*items).startswith(message)


@pytest.mark.parametrize(
    ("items", "message", "name"),
    [
        (["model.predictor=gru"], "model.predictor='gru': expected 'lstm', 'mlp', 'none'", "VIVI-Ex(4)"),  # a traceback
        (["model.predictor=lstm"], "model.predictor=lstm predicts shots for loss.video_loss=infonce", "Ex-YT-S"),  # unused
        (["model.pooling=attention"], "model.pooling=attention pools the shots of a video-level loss", "Ex-YT-F"),  # unused
        (["loss.triplet_group=1"], "loss.triplet_group=1: a group of one exemplar has no negatives", "VIVI-Ex(4)"),  # loss 0
        (["loss.infonce_temperature=0"], "loss.infonce_temperature=0.0: expected > 0", "VIVI-Ex(4)"),  # NaN at step 0
        (["loss.vito_temperature=-1"], "loss.vito_temperature=-1.0: expected > 0", "VITO"),
        (["augment.color_prob=2"], "augment.color_prob=2.0: expected a probability in [0, 1]", "VIVI-Ex(4)"),
        (["augment.hue=0.9"], "augment.hue=0.9: expected 0 to 0.5", "VIVI-Ex(4)"),
        (["augment.brightness=-1"], "augment.brightness=-1.0: expected >= 0", "VIVI-Ex(4)"),
        (["model.exemplar_dim=0"], "model.exemplar_dim=0: expected >= 1", "VIVI-Ex(4)"),  # trained a 0-d embedding, exit 0
        (["model.lstm_layers=0"], "model.lstm_layers=0: expected >= 1", "VIVI-Ex(4)"),
        (["data.labelled_batch=-3"], "data.labelled_batch=-3: expected >= 0", "VIVI-Ex(4)"),
        (["augment.image_size=4"], "augment.image_size=4: expected 8 to 1024", "VIVI-Ex(4)"),
    ],
)
def test_a_setting_that_cannot_train_or_would_be_unused_is_refused(items, message, name):
    assert _refused(*items, name=name).startswith(message)


def test_legal_neighbours_of_the_refused_values_still_pass():
    assert _set("loss.triplet_group=2", "augment.hue=0.5", "augment.color_prob=0", "optim.decay_factor=1").loss.triplet_group == 2
    assert _set("loss.triplet_group=1", name="Rot-YT-F").loss.triplet_group == 1  # no triplet loss there
    assert _set("model.pooling=attention").model.pooling == "attention"  # VIVI-Ex(4)+Attn by hand
    assert _set("optim.steps=100", "optim.decay_steps=100").optim.decay_steps == [100]  # the end: rounding of a scaled schedule


def test_preset_and_scale_are_chosen_by_their_flags_not_set():
    """`--set scale=paper` trained the tiny model under the name "paper"."""
    assert _refused("scale=paper").startswith("--set scale: is chosen with --scale")
    assert _refused("preset=VIVI-Ex(2)").startswith("--set preset: is chosen with --preset")


def test_an_unknown_key_names_the_nearest_setting():
    assert "did you mean optim.steps?" in _refused("optim.step=10")
    assert "did you mean optim.lr?" in _refused("lr=0.1")
    assert _refused("optim=1").startswith("--set optim: is a section, not a setting; set one of its fields, e.g. optim.lr=")
    assert "unknown setting" in _refused("foo.bar=1")


def test_a_key_given_twice_says_which_value_is_used(capsys):
    assert _set("optim.lr=0.2", "optim.lr=0.3").optim.lr == 0.3
    assert "--set optim.lr is given twice (optim.lr=0.2, then optim.lr=0.3): the last, 0.3, is used" in capsys.readouterr().err
    _set("optim.lr=0.2", "optim.lr=0.2")
    assert "twice" not in capsys.readouterr().err  # the same value twice changes nothing


def test_an_unknown_preset_names_the_nearest():
    for typed, meant in (("VIVI-Ex4", "VIVI-Ex(4)"), ("VIVI_Ex(4)", "VIVI-Ex(4)"), ("VIVI-Ex(4)-Co(10)", "VIVI-Ex(4)-Co(10%)")):
        with pytest.raises(UserError, match=rf"did you mean '{re.escape(meant)}'\?"):
            preset(typed)


def test_a_bad_setting_stops_pretrain_before_the_data_is_read(tmp_path, capsys):
    from vivi.cli import main

    argv = ["pretrain", "--preset", "VIVI-Ex(4)", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "model.predictor=gru"]) == 2
    assert capsys.readouterr().err.strip() == "vivi: error: model.predictor='gru': expected 'lstm', 'mlp', 'none'"
    assert not (tmp_path / "run").exists()
