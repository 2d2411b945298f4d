"""Resolve what ``vivi evaluate`` is asked to evaluate into a frozen encoder and its resolution."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vivi.config import preset
from vivi.errors import UserError, detail_line, first_line, listed, warn
from vivi.models.backbone import (
    build_backbone,
    check_finite,
    load_backbone_and_metadata,
    run_backbone,
    run_backbone_metadata,
)
from vivi.train.checkpoint import safe_torch_load


@dataclass
class Encoder:
    name: str
    model: nn.Module
    image_size: int
    source: str | None = None  # the run folder (absolute) of a run or a checkpoint: its metrics.jsonl, for reports
    checkpoint: dict | None = None  # {"path", "step"} of an evaluated training checkpoint


def load_encoder(spec: str, device: str = "cpu", seed: int = 0, image_size: int | None = None) -> Encoder:
    """``RUN`` folder, ``*.safetensors`` file, a training checkpoint ``RUN/checkpoints/step_N.pt``
    (:func:`load_checkpoint_encoder`), ``timm:NAME[:WEIGHTS]`` (another backbone for the same
    table) or ``random[:tiny|paper]`` (an untrained encoder baseline).

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
        raise UserError(f"{spec}: no such run folder, backbone or checkpoint file "
                        "(or use timm:NAME or random[:tiny|paper])")  # fmt: skip
    if is_checkpoint_file(path):
        return load_checkpoint_encoder(path, device=device, image_size=image_size)
    model, meta = load_backbone_and_metadata(path, device=device)
    # every run exports "backbone.safetensors": name such a file after its run folder
    name = path.name if path.is_dir() else path.resolve().parent.name if path.stem == "backbone" else path.stem
    source = str(path.resolve()) if path.is_dir() else None
    return Encoder(name, model, image_size or int(meta.get("image_size", 224)), source)  # size checked by the loader


CHECKPOINT_SUFFIXES = (".pt", ".pth")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a checkpoint renamed (step_N.pt.corrupt) is one too


def is_checkpoint_file(path: Path) -> bool:
    """A file to read as a training checkpoint (``.pt``/``.pth``, or any torch.save zip), not as safetensors."""
    if not path.is_file():
        return False
    if path.suffix in CHECKPOINT_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def load_checkpoint_encoder(
    path: str | Path, device: str | torch.device = "cpu", image_size: int | None = None
) -> Encoder:
    """The backbone of a training checkpoint ``RUN/checkpoints/step_N.pt``, as the run would export it.

    The run's ``config.json`` (two folders up) rebuilds the whole network the run trains
    (:func:`vivi.models.build_model`); the checkpoint's ``model`` weights must fit it exactly, and
    its backbone is taken as the end of ``vivi pretrain`` takes it (:func:`run_backbone`: VITO's
    online network, never the EMA target), at the run's image size. Named ``RUN@stepN``; the
    checkpoint's path and step are kept in :attr:`Encoder.checkpoint`. The file is read with
    ``torch.load(weights_only=True)`` only: a file that is not a vivi checkpoint is a one-line
    :class:`UserError` naming it and the reason.
    """
    from vivi.models import build_model

    path = Path(path)
    run = path.parent.parent
    state = _read_checkpoint(path)  # first: a file that is no checkpoint is named as such, wherever it lies
    cfg, config = _run_config(path, run / "config.json")
    # config.json may come with a checkpoint from someone else: the network it describes is sized on the
    # meta device (no memory) and compared with the weights before it is built for real, so that
    # channels=[10**6, ...] is a one-line misfit, not a 9 TB allocation, and layers=[10**7, ...] (each
    # block several tensors) is refused before even the meta build, which took minutes
    if sum(cfg.model.backbone.layers) > len(state["model"]):
        raise UserError(f"{path}: does not fit the network {config} describes (its model.backbone.layers ask for "
                        f"{sum(cfg.model.backbone.layers)} residual blocks, more than the {len(state['model'])} tensors "
                        "the checkpoint holds)")  # fmt: skip
    try:
        with torch.device("meta"):
            _check_shapes(path, config, build_model(cfg).state_dict(), state["model"])
        model = build_model(cfg)
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"{config}: does not build the run's network ({first_line(e)})") from None
    _load_fitting(path, config, model, state["model"])
    backbone = run_backbone(model)
    check_finite(path, backbone.state_dict())
    step = state["step"]
    name = f"{run.resolve().name}@step{step}"
    where = {"path": str(path.resolve()), "step": step}
    size = image_size or int(run_backbone_metadata(cfg)["image_size"])
    return Encoder(name, backbone.to(device).eval(), size, str(run.resolve()), where)


def _run_config(path: Path, config: Path):  # -> (RunConfig, its file)
    """The config of the run a checkpoint belongs to, read from ``config`` (``RUN/config.json``)."""
    import json

    from vivi.config import from_dict

    if not config.is_file():
        raise UserError(f"{path}: no run config at {config}: a checkpoint is evaluated with its run's config.json, "
                        "two folders up (RUN/checkpoints/step_N.pt)")  # fmt: skip
    try:
        return from_dict(json.loads(config.read_text())), config
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{config}: not a vivi run config ({first_line(e)})") from None


def _read_checkpoint(path: Path) -> dict:
    """``{"step": int, "model": {name: tensor}, ...}`` read with ``weights_only=True``, else a one-line reason."""

    def bad(why: str) -> UserError:
        return UserError(f"{path}: not a vivi checkpoint ({why})")

    state = safe_torch_load(path, "not a vivi checkpoint")
    if not isinstance(state, dict):
        raise bad(f"it holds {type(state).__name__}, not a dict with 'step' and 'model'")
    missing = [k for k in ("step", "model") if k not in state]
    if missing:
        keys = listed(sorted(map(str, state)), 5) or "none"
        raise bad(f"no {' or '.join(map(repr, missing))} key; its keys: {keys}")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise bad(f"'step' is {state['step']!r}, expected a step number")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise bad("'model' is not a state dict of named tensors")
    return state


def _load_fitting(path: Path, config: Path, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(weights, strict=True)``, or a one-line reason naming the tensors that do not fit."""
    _check_shapes(path, config, model.state_dict(), weights)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:  # names and shapes fit; a dtype torch cannot copy, say
        raise UserError(f"{path}: does not fit the network {config} describes ({detail_line(e)})") from None


def _check_shapes(path: Path, config: Path, expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """A one-line reason naming the tensors of ``weights`` that are missing from, extra to or of
    another shape than ``expected`` (a state dict, possibly on the meta device)."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in weights and weights[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"missing {len(missing)} tensors, e.g. {listed(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}, e.g. {listed(unexpected)}" if unexpected else "",
                 f"{len(shapes)} of another shape, e.g. {shapes[0]}" if shapes else ""]  # fmt: skip
        raise UserError(f"{path}: does not fit the network {config} describes ({'; '.join(p for p in parts if p)}); "
                        "not this run's checkpoint, or config.json was edited after training?")  # fmt: skip


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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # corrupt files raise many types; all mean the same to the user
            raise UserError(f"{path}: unreadable weights ({first_line(e)})") from None
    state = safe_torch_load(path, "unreadable weights", ": save model.state_dict(), or use .safetensors")
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
