"""The frame encoder f: timm's pre-activation ResNet v2, and its portable export.

``backbone.safetensors`` holds the weights plus, in its metadata, the timm constructor
arguments, so ``vivi.load_backbone(path)`` rebuilds a plain timm model with no vivi code in
the loop and no pickle anywhere (weights are loaded with safetensors only).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import BatchNormAct2d, GroupNormAct, StdConv2d, create_conv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from vivi.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, NORMS, BackboneConfig, RunConfig
from vivi.errors import UserError, detail_line, first_line, listed

FORMAT = "vivi-backbone/1"


def _group_norm_act(num_channels: int, **kwargs) -> GroupNormAct:
    """BiT's 32 groups, fewer where a tiny model has fewer channels than that."""
    return GroupNormAct(num_channels, num_groups=math.gcd(32, num_channels), **kwargs)


def build_backbone(spec: BackboneConfig) -> ResNetV2:
    """A headless ResNet v2: ``model(x)`` returns pooled pre-logits ``[N, model.num_features]``.

    ``norm="batchnorm"`` is the paper's self-supervised encoder; ``"groupnorm_ws"`` is the BiT
    variant (GroupNorm + weight standardisation) the paper uses when co-training with images.
    """
    if spec.norm == "batchnorm":
        layers = dict(conv_layer=create_conv2d, norm_layer=BatchNormAct2d)
    elif spec.norm == "groupnorm_ws":
        layers = dict(conv_layer=partial(StdConv2d, eps=1e-8), norm_layer=_group_norm_act)
    else:
        raise UserError(f"model.backbone.norm={spec.norm!r}: expected {' or '.join(map(repr, NORMS))}")
    return ResNetV2(
        layers=list(spec.layers),
        channels=tuple(spec.channels),
        stem_chs=spec.stem_chs,
        width_factor=spec.width_factor,
        basic=spec.basic,
        num_classes=0,
        **layers,
    )


def run_backbone(model: nn.Module) -> nn.Module:
    """The frame encoder f of a pretraining network (:func:`vivi.models.build_model`), as a run exports it:
    ``model.backbone``, which is VIVI's backbone and VITO's *online* one (never its EMA target, nor the
    heads), in the contiguous memory format (a channels_last run's weights are stored alike).

    Shared by the end of ``vivi pretrain`` (``backbone.safetensors``) and ``vivi evaluate`` of a
    checkpoint, so that both evaluate the same module."""
    return model.backbone.to(memory_format=torch.contiguous_format)


def run_backbone_metadata(cfg: RunConfig) -> dict[str, str]:
    """What a run's ``backbone.safetensors`` records besides the architecture: the resolution it
    was trained at (the one it is evaluated at), its preset and scale."""
    return {"image_size": str(cfg.augment.image_size), "preset": cfg.preset, "scale": cfg.scale}


def save_run_backbone(model: nn.Module, cfg: RunConfig, path: Path) -> None:
    """Export the backbone of a run's network (:func:`run_backbone`) with its metadata to ``path``."""
    save_backbone(run_backbone(model), cfg.model.backbone, path, extra=run_backbone_metadata(cfg))


def save_backbone(model: nn.Module, spec: BackboneConfig, path: Path, extra: dict[str, str] | None = None) -> None:
    """Write weights + constructor arguments, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "backbone": json.dumps(dataclasses.asdict(spec))}
    meta.update(extra or {})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    _sort_metadata(tmp)
    tmp.replace(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header in place with its metadata keys sorted: safetensors writes them
    in a random order (a Rust hash map), so two identical runs gave backbone files of other bytes
    (another checksum) for the same tensors. Same length, padded with spaces as the format allows."""
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the same keys and values reordered: always, unless the JSON is spelt otherwise
            f.seek(8)
            f.write(text.ljust(size))


def _spec_from_metadata(path: Path, text: str) -> BackboneConfig:
    """The ``backbone`` metadata field as a config, every field's type checked: a tampered or
    foreign file is named with the bad field, not met as a TypeError inside timm."""

    def bad(why: str) -> UserError:
        return UserError(f"{path}: metadata field 'backbone' {why}")

    try:
        fields = json.loads(text)
    except ValueError as e:
        raise bad(f"is not valid JSON ({e})") from None
    if not isinstance(fields, dict):
        raise bad(f"is not a JSON object (got {type(fields).__name__})")
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    if unknown := sorted(set(fields) - known):
        raise bad(f"has unknown keys {', '.join(map(repr, unknown))} (expected {', '.join(sorted(known))})")
    defaults = BackboneConfig()
    for key, value in fields.items():
        expected = getattr(defaults, key)
        if isinstance(expected, list):
            ok = isinstance(value, list) and bool(value) and all(_positive_int(v) for v in value)
            want = "a list of positive integers"
        elif isinstance(expected, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(expected, int):
            ok, want = _positive_int(value), "a positive integer"
        elif key == "norm":
            ok, want = value in NORMS, " or ".join(map(repr, NORMS))
        else:  # a field added to BackboneConfig later: at least its type
            ok, want = isinstance(value, type(expected)), f"a {type(expected).__name__}"
        if not ok:
            raise bad(f"has {key}={value!r}, expected {want}")
    return BackboneConfig(**fields)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def metadata_image_size(path: Path, meta: dict[str, str]) -> int:
    """The ``image_size`` metadata field (the resolution the backbone was trained at), checked."""
    raw = meta.get("image_size", "")
    try:
        size = int(raw)
    except ValueError:
        size = None
    if size is None or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise UserError(f"{path}: metadata field 'image_size' is {raw!r}, expected an integer from "
                        f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (pixels)")  # fmt: skip
    return size


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        if not (p / "backbone.safetensors").is_file() and list(p.glob("checkpoints/*")):
            newest = newest_checkpoint(p)
            then = f", or evaluate its newest checkpoint by path: vivi evaluate {newest} --task ..." if newest else ""
            raise UserError(f"{p}: the run has checkpoints but no backbone.safetensors yet: it has not finished "
                            f"(run its `vivi pretrain` command again to continue it{then})")  # fmt: skip
        p = p / "backbone.safetensors"
    if not p.is_file():
        raise UserError(f"{p}: no such backbone file (expected a run folder or a .safetensors file)")
    return p


_CHECKPOINT = re.compile(r"step_(\d+)\.pt$")  # as vivi.train.checkpoint names them (models do not import train)


def newest_checkpoint(run: Path) -> Path | None:
    """``RUN/checkpoints/step_N.pt`` of the highest N, if any (not a ``.tmp`` or ``.corrupt`` one)."""
    names = ((_CHECKPOINT.fullmatch(q.name), q) for q in (run / "checkpoints").glob("step_*.pt"))
    found = [(int(m.group(1)), q) for m, q in names if m]
    return max(found)[1] if found else None


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> ResNetV2:
    """Load a vivi backbone (a run folder or its ``backbone.safetensors``) as a timm model.

    >>> model = vivi.load_backbone("runs/vivi-ex4")     # timm ResNetV2, eval mode
    >>> feats = model(images)                           # [N, model.num_features]
    """
    return load_backbone_and_metadata(path, device)[0]


def load_backbone_and_metadata(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResNetV2, dict[str, str]]:
    """:func:`load_backbone` plus the file's metadata (image size, preset), read in the same pass."""
    p = _resolve(path)
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable safetensors file ({first_line(e)})") from None
    if meta.get("format") != FORMAT or "backbone" not in meta:
        raise UserError(f"{p}: not a vivi backbone (metadata lacks format={FORMAT!r})")
    spec = _spec_from_metadata(p, meta["backbone"])
    if "image_size" in meta:
        metadata_image_size(p, meta)
    _check_fits(p, spec, state)
    check_finite(p, state)
    model = build_backbone(spec)  # now as large as the weights in the file, no larger
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def _check_fits(path: Path, spec: BackboneConfig, state: dict[str, torch.Tensor]) -> None:
    """Build ``spec`` on the meta device (no memory) and compare it with the weights, so that
    tampered sizes are an error naming the file, not a huge allocation or a failure inside timm.
    Each residual block holds several tensors, so more blocks than the file has tensors cannot fit;
    over 1000 (far beyond any ResNet) that is refused first, as building ``layers=[10**7, ...]`` even
    on the meta device took minutes and GBs. Smaller misfits are named below, tensor by tensor."""
    if sum(spec.layers) > max(len(state), 1000):
        raise UserError(f"{path}: metadata field 'backbone' asks for {sum(spec.layers)} residual blocks "
                        f"(layers={spec.layers}), more than the {len(state)} tensors the file holds")
    try:
        with torch.device("meta"):
            model = build_backbone(spec)
    except (ValueError, TypeError, RuntimeError) as e:  # values of the right types that timm still refuses
        raise UserError(f"{path}: metadata field 'backbone' does not build a ResNet v2 ({first_line(e)})") from None
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:  # torch's own message has only its heading on the first line
        raise UserError(f"{path}: weights do not match the stored architecture (missing {len(missing)} tensors, e.g. "
                        f"{listed(missing) or 'none'}; unexpected {len(unexpected)}, e.g. {listed(unexpected) or 'none'})")
    try:
        model.load_state_dict(state, strict=True, assign=True)  # checks names and shapes only
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the stored architecture ({detail_line(e)})") from None


def check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or inf (a damaged file, a diverged run), naming the first such
    tensor: they made every feature NaN and the probe failed with scikit-learn's traceback."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: tensor {name!r} holds NaN or inf values; the file is damaged or the run diverged")
