"""`vivi evaluate` with timm backbones, the fine-tune protocols and robustness; `vivi report` flags."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vivi.cli import main
from vivi.errors import UserError
from vivi.evaluate.encoders import load_encoder


def test_timm_backbone_with_local_weights(tmp_path, capsys):
    enc = load_encoder("timm:test_resnet", seed=1)
    assert (enc.name, enc.image_size) == ("test_resnet (random init) s1", 160)  # no weights: tables say so (and the seed)
    assert capsys.readouterr().err.count("timm:test_resnet: no weights given, so its weights are random") == 1
    assert enc.model(torch.zeros(1, 3, 32, 32)).shape == (1, enc.model.num_features)
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in enc.model.state_dict().items()}
    save_file({**state, "fc.weight": torch.zeros(3, 3)}, str(tmp_path / "w.safetensors"))  # a head is ignored
    torch.save(state, tmp_path / "w.pth")
    for weights in ("w.safetensors", "w.pth"):
        loaded = load_encoder(f"timm:test_resnet:{tmp_path / weights}", image_size=64)
        assert (loaded.name, loaded.image_size) == ("test_resnet", 64)
        assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"other\.pth: does not fit timm:test_resnet \(missing"):
        load_encoder(f"timm:test_resnet:{tmp_path / 'other.pth'}")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"bad\.pth: unreadable weights"):
        load_encoder(f"timm:test_resnet:{tmp_path / 'bad.pth'}")
    with pytest.raises(UserError, match=r"timm:resnet19: unknown timm model; close matches: resnet18"):
        load_encoder("timm:resnet19")
    assert "random" not in capsys.readouterr().err  # only the encoder without weights was warned about


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match=r"evil\.pth: unreadable weights \(it holds pickled objects, not only tensors: .*GLOBAL.*; vivi never loads those: "
                                        r"save model\.state_dict\(\), or use \.safetensors\)") as e:
        load_encoder(f"timm:test_resnet:{tmp_path / 'evil.pth'}")
    assert "False" not in str(e.value), "torch's advice to load it with weights_only=False is not passed on"
    assert not marker.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "random:tiny", "--task", "vtab:nope", "--vtab-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown task nope (available: caltech101," in err and err.count("\n") == 1
    assert main(["evaluate", "random:tiny", "--task", "mini-vtab", "--protocol", "vtab2k"]) == 2
    assert "available: linear, knn, finetune, corruptions, vtab1k, robustness" in capsys.readouterr().err
    assert main(["evaluate", "random:tiny", "--task", "mini-vtab", "--protocol", "vtab1k", "--scale", "huge"]) == 2
    assert "--scale huge: unknown scale (available: tiny, paper)" in capsys.readouterr().err


def test_cli_robustness_writes_json(tmp_path, capsys):
    from PIL import Image

    for split, cls, video, n in (("train", "a", "", 4), ("train", "b", "", 4), ("test", "a", "v", 5), ("test", "b", "w", 5)):
        for i in range(n):
            path = tmp_path / "d" / split / cls / video / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 0, 0) if cls == "a" else (0, 0, 200)).save(path)
    out = tmp_path / "r.json"
    args = ["evaluate", "random:tiny", "--task", f"frames:{tmp_path / 'd'}", "--protocol", "robustness", "--k", "1"]
    assert main([*args, "--out", str(out), "--image-size", "16"]) == 0
    result = json.loads(out.read_text())
    (entry,) = result["tasks"]
    assert (result["protocol"], entry["k"], entry["n_anchors"], entry["n_sequences"]) == ("robustness", 1, 2, 2)  # 5 frames, k=1: one anchor each
    assert "pm-1" in capsys.readouterr().out
