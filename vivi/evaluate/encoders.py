"""Resolve what ``vivi evaluate`` is asked to evaluate into a frozen encoder and its resolution."""

from __future__ import annotations

import difflib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vivi.config import preset
from vivi.errors import UserError, first_line, warn
from vivi.models.backbone import build_backbone, check_finite, load_backbone_and_metadata


@dataclass
class Encoder:
    name: str
    model: nn.Module
    image_size: int


def load_encoder(spec: str, device: str = "cpu", seed: int = 0, image_size: int | None = None) -> Encoder:
    """``RUN`` folder, ``*.safetensors`` file, ``timm:NAME[:WEIGHTS]`` (another backbone for the
    same table) or ``random[:tiny|paper]`` (an untrained encoder baseline).

    ``image_size`` overrides the resolution the model was trained at (timm: its default
    input size, else 224).
    """
    if spec.startswith("timm:"):
        name, _, weights = spec[len("timm:") :].partition(":")
        model = load_timm(name, Path(weights) if weights else None, seed).to(device).eval()
        size = image_size or int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, DEFAULT_TIMM_SIZE))[-1])
        if not weights:  # nothing is downloaded: without a file the network is untrained
            warn(f"timm:{name}: no weights given, so its weights are random (seed {seed}); nothing is downloaded: "
                 f"pass timm:{name}:WEIGHTS.safetensors to evaluate trained weights")  # fmt: skip
            name = _seeded(f"{name} {RANDOM_INIT}", seed)
        return Encoder(name, model, size)
    if spec == "random" or spec.startswith("random:"):  # not a run folder or file named random-...
        scale = spec.partition(":")[2] or "tiny"
        cfg = preset("VIVI-Ex(4)", scale)
        torch.manual_seed(seed)
        model = build_backbone(cfg.model.backbone).to(device).eval()
        return Encoder(_seeded(f"random-{scale}", seed), model, image_size or cfg.augment.image_size)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: no such run folder or backbone file (or use timm:NAME or random[:tiny|paper])")
    model, meta = load_backbone_and_metadata(path, device=device)
    # every run exports "backbone.safetensors": name such a file after its run folder
    name = path.name if path.is_dir() else path.resolve().parent.name if path.stem == "backbone" else path.stem
    return Encoder(name, model, image_size or int(meta.get("image_size", 224)))  # checked by the loader


def _seeded(name: str, seed: int) -> str:
    """A random encoder's name with its ``--seed`` unless 0: results of ``random:tiny --seed 3`` were
    filed as "random-tiny" like seed 0's, and a reader could not tell which network was measured."""
    return name if seed == 0 else f"{name} s{seed}"


DEFAULT_TIMM_SIZE = 224
RANDOM_INIT = "(random init)"  # in the name of a timm encoder without weights, so tables say so


def load_timm(name: str, weights: Path | None = None, seed: int = 0) -> nn.Module:
    """``timm.create_model(name, num_classes=0)`` (pooled features), weights from a local file.

    Nothing is downloaded. ``.safetensors`` is read with safetensors, anything else with
    ``torch.load(weights_only=True)``, which refuses pickled code. A classifier in the file
    is ignored; any other mismatch is an error naming the keys.
    """
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UserError(f"timm:{name}: unknown timm model{hint}")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights is None:
        return model
    state = _read_weights(weights)
    check_finite(weights, state)  # as vivi's own backbone files: NaN weights made every feature NaN
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (timm:{name}: {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]  # fmt: skip
    if wrong:  # load_state_dict raises RuntimeError on these even with strict=False
        raise UserError(f"{weights}: does not fit timm:{name} ({len(wrong)} tensors of another shape, e.g. {wrong[0]})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = ("fc.", "head.", "classifier.", "head.fc.", "last_linear.")
    unexpected = [k for k in unexpected if not k.startswith(head)]
    if missing or unexpected:
        raise UserError(
            f"{weights}: does not fit timm:{name} (missing {len(missing)} keys, e.g. {missing[:3]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )
    return model


def _refused_global(e: BaseException) -> str | None:
    """The object torch's restricted unpickler refused ("... unsupported GLOBAL posix.system ..."),
    if that is why it failed; its advice in the line before, to load the file with
    weights_only=False, is not passed on."""
    return next((line.strip() for line in str(e).splitlines()[1:] if "GLOBAL" in line), None)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # torch's note on the pickle protocol adds nothing here
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own advice here is to load it with weights_only=False
        if refused := _refused_global(e):
            raise UserError(f"{path}: not a plain state dict of tensors ({refused}); vivi loads .pth files with "
                            "weights_only=True and never runs code from one: save model.state_dict(), or use "
                            ".safetensors") from e
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise UserError(f"{path}: unreadable weights (not a file torch.save wrote{': ' if detail else ''}{detail})") from e
    except Exception as e:  # corrupt files raise many types; all mean the same to the user
        raise UserError(f"{path}: unreadable weights ({first_line(e)})") from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
