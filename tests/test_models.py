import pytest
import torch
from timm.models.resnetv2 import ResNetV2

import vivi
from vivi.config import BackboneConfig, preset
from vivi.errors import UserError
from vivi.models.backbone import build_backbone, save_backbone
from vivi.models.predictors import LSTMPredictor, MLPPairPredictor, lstm_unrolled, prediction_targets
from vivi.models.vivi import VIVIModel
from vivi.train.checkpoint import load_checkpoint, save_checkpoint


def test_backbone_round_trip_through_safetensors(tmp_path):
    spec = BackboneConfig(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], stem_chs=16)
    torch.manual_seed(0)
    model = build_backbone(spec).eval()
    path = tmp_path / "backbone.safetensors"
    save_backbone(model, spec, path, extra={"image_size": "32"})
    loaded = vivi.load_backbone(tmp_path)  # a run folder works as well as the file
    assert isinstance(loaded, ResNetV2) and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_groupnorm_ws_backbone_builds():
    spec = BackboneConfig(norm="groupnorm_ws")
    assert build_backbone(spec)(torch.randn(2, 3, 32, 32)).shape == (2, 256)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x00" * 64])
def test_corrupt_backbone_is_a_user_error(tmp_path, content):
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match="backbone.safetensors"):
        vivi.load_backbone(path)


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    path = save_checkpoint(tmp_path, 5, {"step": 5, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(path)["step"] == 5
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "checkpoints" / "step_00000001.pt"
    path.parent.mkdir()
    torch.save({"step": 1, "model": Evil()}, path)
    with pytest.raises(UserError):
        load_checkpoint(path)


def test_lstm_predicts_each_next_shot_from_previous_only():
    torch.manual_seed(0)
    lstm = LSTMPredictor(dim=8, hidden=6, layers=2)
    shots = torch.randn(3, 4, 8)
    pred, keys = lstm(shots)
    assert pred.shape == (3, 3, 8) and keys is shots
    changed = shots.clone()
    changed[:, 3] += 1  # the last shot is never an input
    assert torch.equal(lstm(changed)[0], pred)
    changed[:, 1] += 1  # shot 2 influences predictions of shots 3 and 4 but not of shot 2
    new = lstm(changed)[0]
    assert torch.equal(new[:, 0], pred[:, 0]) and not torch.allclose(new[:, 1], pred[:, 1])


@pytest.mark.parametrize("bias", [True, False])
def test_unrolled_lstm_matches_torch_lstm(bias):
    """The predictor's unrolled LSTM against torch's own (oneDNN or native kernels): the same outputs,
    and the same gradients for the input and every weight."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 8, num_layers=2, batch_first=True, bias=bias)
    x = torch.randn(3, 4, 16)
    x_ref, x_got = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, _ = lstm(x_ref)
    got = lstm_unrolled(lstm, x_got)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * weights).sum(), [x_ref, *lstm.parameters()])
    g_got = torch.autograd.grad((got * weights).sum(), [x_got, *lstm.parameters()])
    for r, g in zip(g_ref, g_got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_unrolled_lstm_under_bf16_autocast_matches_torch_lstm():
    """The mixed-precision path (bf16 autocast, the default on CUDA), checked on the CPU: bf16 out, as
    torch's LSTM gives, equal to it within bf16's precision, and a finite gradient."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 8, num_layers=2, batch_first=True)
    x = torch.randn(3, 4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (ref, _) = lstm_unrolled(lstm, x), lstm(x)
    assert got.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=1e-2, rtol=2e-2)
    (grad,) = torch.autograd.grad(got.float().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_unrolled_lstm_refuses_what_it_does_not_cover():
    for lstm in (torch.nn.LSTM(4, 3, batch_first=False), torch.nn.LSTM(4, 3, batch_first=True, bidirectional=True)):
        with pytest.raises(ValueError, match="batch-first, one-way"):
            lstm_unrolled(lstm, torch.randn(2, 3, 4))


def test_mlp_pair_predictor_shapes():
    pred, keys = MLPPairPredictor(dim=8, hidden=5, out=4)(torch.randn(3, 2, 8))
    assert pred.shape == (3, 1, 4) and keys.shape == (3, 2, 4)


def test_prediction_targets_point_at_later_shots_of_same_video():
    qv, kv, pos = prediction_targets(2, 4, torch.device("cpu"))
    assert qv.tolist() == [0, 0, 0, 1, 1, 1]
    assert pos.tolist() == [1, 2, 3, 5, 6, 7]
    assert (kv[pos] == qv).all()


def test_vivi_model_outputs():
    cfg = preset("VIVI-Ex(4)")
    model = VIVIModel(cfg)
    out = model(torch.randn(2, 4, 2, 3, 32, 32))
    assert out.exemplar.shape == (16, 1000)
    assert torch.allclose(out.exemplar.norm(dim=1), torch.ones(16), atol=1e-5)
    assert out.predictions.shape == (2, 3, 512) and out.keys.shape == (2, 4, 512)


def test_an_unfinished_run_and_a_run_s_backbone_file_are_named_after_the_run(tmp_path):
    from vivi.evaluate.encoders import load_encoder

    run = tmp_path / "my-run"
    save_checkpoint(run, 5, {"step": 5, "model": {"w": torch.ones(2)}})
    with pytest.raises(UserError, match="my-run: the run has checkpoints but no backbone.safetensors yet"):
        load_encoder(str(run))
    spec = BackboneConfig(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8], stem_chs=8)
    save_backbone(build_backbone(spec), spec, run / "backbone.safetensors", extra={"image_size": "32"})
    assert load_encoder(str(run / "backbone.safetensors")).name == "my-run"  # not "backbone" for every run
    (run / "backbone.safetensors").rename(tmp_path / "exported.safetensors")
    assert load_encoder(str(tmp_path / "exported.safetensors")).name == "exported"


TINY = BackboneConfig(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8], stem_chs=8)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("backbone", "{not json", "metadata field 'backbone' is not valid JSON"),
        ("backbone", '{"evil": 1}', "metadata field 'backbone' has unknown keys 'evil'"),
        ("backbone", "[1, 2]", "metadata field 'backbone' is not a JSON object"),
        ("backbone", '{"layers": "1111"}', "metadata field 'backbone' has layers='1111', expected a list of positive integers"),
        ("backbone", '{"stem_chs": -8}', "metadata field 'backbone' has stem_chs=-8, expected a positive integer"),
        ("backbone", '{"norm": "layernorm"}', "metadata field 'backbone' has norm='layernorm'"),
        ("backbone", '{"channels": [100000, 100000, 100000, 100000]}', "weights do not match the stored architecture"),
        ("image_size", "abc", "metadata field 'image_size' is 'abc', expected an integer from 8 to 1024"),
        ("image_size", "-5", "metadata field 'image_size' is '-5', expected an integer from 8 to 1024"),
    ],
)
def test_tampered_backbone_metadata_is_a_user_error_naming_the_field(tmp_path, field, value, reason):
    """Metadata is text anyone can edit: each bad field is named (it was a JSONDecodeError, a
    ValueError, a TypeError from BackboneConfig, or a RuntimeError inside the first conv)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "backbone.safetensors"
    save_backbone(build_backbone(TINY), TINY, path, extra={"image_size": "32"})
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={**meta, field: value})
    with pytest.raises(UserError) as info:
        vivi.load_backbone(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
