"""Typed run configuration, the paper's presets, and ``--set key=value`` overrides.

A preset is named as the paper names its model (Table 4/5 of VIVI) and resolved at a size
(``tiny``: a CPU-sized ResNet v2 at 64 px; ``paper``: ResNet-50 v2 at 224 px with Table 5's
batch and schedule). The resolved config is saved with every run, so a run can always be
reproduced from its ``config.json`` alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from vivi.errors import UserError, warn

# Input resolutions a backbone is evaluated at (pixels): the paper runs at 224, tiny models at 64;
# near 1024 a batch of 256 is already ~3 GB of floats, below 8 little is left of an image.
MAX_SEED = 2**63 - 1  # what numpy and torch generators both take
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
# The most optimiser steps a run may take: the schedule is one float64 per step, computed at the start
# (`optim.steps=1e10` was an out-of-memory error "use a lower --image-size" after the data was read);
# 10M is 83x the paper's 120k steps and an 80 MB schedule.
MAX_STEPS = 10_000_000
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600  # dist_timeout_s: a week


@dataclass
class BackboneConfig:
    """Arguments of timm's ``ResNetV2`` (pre-activation ResNet v2)."""

    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    stem_chs: int = 32
    width_factor: int = 1
    basic: bool = True
    norm: str = "batchnorm"  # "batchnorm" | "groupnorm_ws" (BiT: GroupNorm + weight standardisation)


@dataclass
class DataConfig:
    """How a batch is drawn from the video hierarchy: V videos x K shots x F frames."""

    mode: str = "shots"  # "shots": K consecutive shots of F consecutive frames; "frame": one fixed frame per video;
    # "images": one image of an image folder per "video" (the Ex-/Rot-ImageNet baselines);
    # "pairs": two frames of one shot at most max_gap samples apart (VITO's temporally displaced views)
    videos: int = 8  # V
    shots: int = 4  # K
    frames: int = 8  # F (for mode "frame": the number of augmented copies of the one frame)
    max_gap: int = 2  # mode "pairs": the displacement is uniform in 0..max_gap samples (~seconds at 1 Hz)
    load_size: int = 96  # frames are resized (short side) and centre-cropped to this square on load
    # loader processes (each builds whole batches; any count gives the same data); "auto": one, or none
    # on a CPU whose cores torch's threads already take (vivi.data.batches.loader_workers)
    workers: int | str = "auto"
    cache_mb: int = 512  # decoded frames kept per loader process (0: none); see vivi.data.frames.FrameCache
    labelled: str = ""  # co-training: "imagefolder:DIR" of labelled images (DIR/<class>/*), "" for none
    labelled_fraction: float = 1.0  # class-balanced fraction of the labelled images used (Co(10%): 0.1)
    labelled_batch: int = 0  # labelled images per step; > 0 makes a co-trained run (paper 3.1)


@dataclass
class AugmentConfig:
    """Inception-style crop + flip + colour distortion, applied per frame, batched on the device.

    ``autoaugment`` (the ``-AA`` presets) replaces the colour distortion by AutoAugment's ImageNet
    policy, applied per frame before the crop and flip, as the paper replaces [55]'s mechanism.
    """

    image_size: int = 64
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    color_prob: float = 0.8
    gray_prob: float = 0.2
    autoaugment: bool = False
    # where the augmentation runs: "device", batched in the training process (on its GPU, if any);
    # "loader", in the loader workers, from a generator of (seed, step, rank) (see
    # vivi.train.loop.augment_in_loader for when each is faster)
    where: str = "device"


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    exemplar_dim: int = 1000  # linear head before L2 normalisation and the triplet loss
    video_dim: int = 512  # shot embedding: mean-pooled pre-logits projected to this size
    pooling: str = "mean"  # shot pooling p: "mean" (the paper) | "attention" (VITO's, over the stages below)
    attention_stages: list[int] = field(default_factory=lambda: [3, 4])  # timm feature indices (4: last stage)
    attention_hidden: int = 128  # width of each stage's 1x1-conv scorer
    projector_hidden: int = 1024  # VITO: projector and predictor MLPs
    projector_dim: int = 128
    predictor: str = "lstm"  # "lstm" (K > 2 shots) | "mlp" (K = 2 shots) | "none"
    lstm_hidden: int = 256
    lstm_layers: int = 2
    mlp_hidden: int = 256
    mlp_out: int = 128
    order_hidden: int = 512  # shot order prediction: one hidden layer on the concatenated shot embeddings
    classes: int = 0  # co-training's linear classification head; set from the labelled folder, 0 = none
    class_names: list[str] = field(default_factory=list)  # the labelled folder's classes, in head order


@dataclass
class LossConfig:
    frame_loss: str = "exemplar"  # frame/shot-level loss L_SF: "exemplar" (triplet) | "rotation" | "vito"
    vito_temperature: float = 0.1  # VITO: InfoNCE between online predictions and EMA-target projections
    margin: float = 0.5  # semi-hard triplet margin (Appendix B)
    squared: bool = True  # squared Euclidean distances, as TF's triplet_semihard_loss
    # Exemplars (shots, or images) per semi-hard triplet loss: negatives are mined within groups of this
    # many consecutive exemplars of a process's batch. The paper-scale presets take the paper's 16 (Appendix
    # B: the loss per TPU core, 2048 exemplars over 128 cores), which also makes the loss the same on any
    # number of processes; 0: all of a process's exemplars (the tiny presets, whose batch is 32 exemplars,
    # and runs made before this setting)
    triplet_group: int = 0
    video_loss: str = "infonce"  # "infonce" | "order" (shot order prediction) | "none"
    # lambda. Table 5's swept values (and the chosen one) of VIVI-Ex(4), -Ex(2), -Ord and -Rot are lost in
    # our text of it: 0.1 is our default; the -Big and co-trained presets take Table 5's 0.04 (see _LAMBDA_BIG_CO)
    video_weight: float = 0.1
    infonce_temperature: float = 1.0  # the paper's score is a plain dot product (temperature 1)
    # Where InfoNCE's negatives come from when training on several processes: "global" gathers every
    # rank's shot embeddings (the LSTM presets: the paper's whole-batch negatives); "local" keeps
    # each rank's own (the 2-shot MLP presets, as the paper does). The paper's "per core" is 1024 / 128 =
    # 8 videos' shots; "local" here is a process's whole batch (1024 videos on one GPU at paper scale)
    infonce_negatives: str = "global"
    # gamma, the weight of the supervised cross-entropy when co-training. The paper swept up to four
    # values (Table 5) but the swept and chosen values are lost in our text of it; 1.0 is our default.
    sup_weight: float = 1.0


@dataclass
class OptimConfig:
    """SGD with momentum, linear warm-up, step decay: the shape of Table 5, scaled to ``steps``."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    steps: int = 400
    warmup_steps: int = 17
    decay_steps: list[int] = field(default_factory=lambda: [300, 367])
    decay_factor: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    ema_momentum: float = 0.99  # VITO's target network: momentum rises from this to 1 on a cosine (BYOL)


@dataclass
class RunConfig:
    preset: str = "VIVI-Ex(4)"
    scale: str = "tiny"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU) | "bf16" | "fp16" (with a loss scaler) | "off"
    channels_last: bool = True  # model and frames in channels-last layout: same maths, faster on CPU and GPU
    sync_batchnorm: bool = False  # BatchNorm statistics over all ranks (CUDA only, as torch's SyncBatchNorm)
    compile: bool = False  # torch.compile the model
    # seconds a process waits in a collective for the others before the run stops with one line (a hung
    # process: a stuck read, a deadlocked loader, a node that stopped answering); 30 min, torch's default for gloo.
    # Keep it above the longest pause of a healthy run (rank 0 writing a checkpoint, the first read of the data)
    dist_timeout_s: int = 1800
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def shots_per_batch(self) -> int:
        return self.data.videos * self.data.shots


SCALES = ("tiny", "paper")

# Table 5 of the paper: (iterations, warm-up iterations, decay milestones) at 120k/100k scale.
_FRAME_SCHEDULE = (120_000, 17_000, (52_000, 86_000))
_SHOT_SCHEDULE = (120_000, 5_000, (90_000, 110_000))
_CO10_SCHEDULE = (100_000, 3_000, (76_000, 88_000, 96_000))
_CO100_SCHEDULE = (100_000, 3_000, (70_000, 85_000, 95_000))

# Table 5's columns WD, lambda, gamma, as far as our text of it lets them be read. Its 9 columns are
# LR, #it., w. #it., LR schedule, WD, lambda, gamma, batch size, #exemp.; values typeset as maths
# (powers of ten, swept lists with the chosen value underlined) are lost in the text. The frame
# baselines' rows read "0.1@52k;86k - - 2048 8": lambda and gamma are "-" there, so the value lost
# before them is the weight decay, i.e. every model had one. The -Big and co-trained rows read
# "0.04 - sh." and "0.04 sh., 256 im.": one value among WD / lambda, the other lost. We read 0.04 as
# lambda (a single value where no sweep was run, reused from VIVI-Ex(4)'s sweep) and the weight decay
# as the same lost power of ten as the other rows: a weight decay of 0.04 with SGD at lr 0.8 would
# shrink every weight by 3.2% per step. The lost value is taken from the protocol the paper says it
# follows for its baselines (Kolesnikov et al. 2019, [32]), whose code defaults to 1e-4.
_WEIGHT_DECAY = 1e-4
_LAMBDA_BIG_CO = 0.04  # Table 5: lambda of VIVI-Ex(4)-Big and the VIVI-Ex(4)-Co(...) models
# Appendix B: "the triplet loss is computed per core", 2048 / 128 exemplars each: the paper scale's groups.
# The tiny scale's whole batch is 32 exemplars, two such groups: it mines over the batch (0), which the
# study measured better there (VIVI-Ex(4), 3 seeds x 400 steps: 39.1 against 37.8 with groups of 16,
# higher on every seed; benchmarks/results/presets-s17/)
_TRIPLET_GROUP = {"paper": 16, "tiny": 0}

# Co-training (paper 3.1, Table 5): VIVI-Ex(4) plus a supervised loss on labelled images; GroupNorm +
# weight standardisation avoid mixing batch statistics of the two sources; lr and the image batch
# (paper scale) differ with the amount of labelled data.
_COTRAIN = dict(
    mode="shots", shots=4, frames=8, predictor="lstm", video_loss="infonce", video_weight=_LAMBDA_BIG_CO,
    norm="groupnorm_ws",
)

# name -> (data mode, K shots, F frames, predictor, video loss, frame loss, wider backbone, schedule);
# co-training adds norm, paper lr, labelled images per step (paper scale) and the labelled fraction;
# a preset may also set pooling, weight_decay (else _WEIGHT_DECAY) and video_weight (lambda, else 0.1).
# Every preset takes its scale's loss.triplet_group (_TRIPLET_GROUP).
_PRESETS: dict[str, dict[str, Any]] = {
    "Ex-YT-F": dict(mode="frame", shots=1, frames=8, predictor="none", video_loss="none", schedule=_FRAME_SCHEDULE),
    "Ex-YT-S": dict(mode="shots", shots=1, frames=8, predictor="none", video_loss="none", schedule=_SHOT_SCHEDULE),
    "VIVI-Ex(2)": dict(mode="shots", shots=2, frames=8, predictor="mlp", video_loss="infonce", schedule=_SHOT_SCHEDULE),
    "VIVI-Ex(4)": dict(mode="shots", shots=4, frames=8, predictor="lstm", video_loss="infonce", schedule=_SHOT_SCHEDULE),
    "VIVI-Ex(4)-Big": dict(
        mode="shots", shots=4, frames=8, predictor="lstm", video_loss="infonce", schedule=_SHOT_SCHEDULE,
        width_factor=3, video_weight=_LAMBDA_BIG_CO,
    ),
    "VIVI-Ex(2)-Ord": dict(mode="shots", shots=2, frames=8, predictor="none", video_loss="order", schedule=_SHOT_SCHEDULE),
    "Rot-YT-F": dict(
        mode="frame", shots=1, frames=1, predictor="none", video_loss="none", frame_loss="rotation",
        schedule=_FRAME_SCHEDULE,
    ),
    "VIVI-Rot(2)": dict(
        mode="shots", shots=2, frames=4, predictor="mlp", video_loss="infonce", frame_loss="rotation",
        schedule=_SHOT_SCHEDULE,
    ),
    "VIVI-Rot(4)": dict(
        mode="shots", shots=4, frames=4, predictor="lstm", video_loss="infonce", frame_loss="rotation",
        schedule=_SHOT_SCHEDULE,
    ),
    "VIVI-Ex(4)-Co(10%)": dict(
        **_COTRAIN, schedule=_CO10_SCHEDULE, lr=0.1, labelled_fraction=0.1, labelled_batch=256,
    ),
    "VIVI-Ex(4)-Co(100%)": dict(
        **_COTRAIN, schedule=_CO100_SCHEDULE, lr=0.8, labelled_fraction=1.0, labelled_batch=2048,
    ),
    "VIVI-Ex(4)-Co(100%)-Big": dict(
        **_COTRAIN, schedule=_CO100_SCHEDULE, lr=0.8, labelled_fraction=1.0, labelled_batch=2048, width_factor=3,
    ),
    # VITO (Parthasarathy et al. 2023): temporally displaced frames of one shot, multi-scale attention
    # pooling, online network + EMA target, InfoNCE with in-batch negatives; the VIVI schedule and
    # optimiser, so it compares with the paper's models at the same budget of frames per step.
    "VITO": dict(
        mode="pairs", shots=1, frames=2, predictor="none", video_loss="none", frame_loss="vito",
        pooling="attention", schedule=_SHOT_SCHEDULE, weight_decay=0.0,  # VITO's own value is not in our text of it
    ),
    # The purely supervised baseline: the co-trained backbone (GroupNorm + WS) on labelled images alone
    # (--images DIR/<class>/*, --labelled-fraction), cross-entropy only; the reference of the robustness study.
    "Sup-ImageNet": dict(
        mode="images", shots=1, frames=1, predictor="none", video_loss="none", frame_loss="supervised",
        norm="groupnorm_ws", schedule=_CO10_SCHEDULE, lr=0.1,
    ),
    "Ex-ImageNet": dict(
        mode="images", shots=1, frames=8, predictor="none", video_loss="none", schedule=_FRAME_SCHEDULE,
    ),
    "Rot-ImageNet": dict(
        mode="images", shots=1, frames=1, predictor="none", video_loss="none", frame_loss="rotation",
        schedule=_FRAME_SCHEDULE,
    ),
}

PRESET_NAMES = tuple(_PRESETS)  # base names; any of them also takes the AutoAugment suffix
AA_SUFFIX = "-AA"
ATTN_SUFFIX = "+Attn"


def _base_name(name: str) -> tuple[str, bool]:
    """``"VIVI-Ex(4)-AA"`` -> ``("VIVI-Ex(4)", True)``; names without the suffix pass through."""
    if name.endswith(AA_SUFFIX) and _strip_attn(name[: -len(AA_SUFFIX)])[0] in _PRESETS:
        return name[: -len(AA_SUFFIX)], True
    return name, False


def _strip_attn(name: str) -> tuple[str, bool]:
    """``"VIVI-Ex(4)+Attn"`` -> ``("VIVI-Ex(4)", True)``: VIVI's losses with VITO's attention pooling."""
    if name.endswith(ATTN_SUFFIX):
        return name[: -len(ATTN_SUFFIX)], True
    return name, False


def _scale_schedule(steps: int, schedule: tuple[int, int, tuple[int, ...]]) -> tuple[int, list[int]]:
    """Keep Table 5's shape (warm-up and decay points as fractions of the run) at any length."""
    total, warm, decays = schedule
    return round(steps * warm / total), [round(steps * d / total) for d in decays]


def preset(name: str, scale: str = "tiny") -> RunConfig:
    """Resolve a paper model name (optionally suffixed ``+Attn`` and/or ``-AA``) at a size; unknown names list
    the valid ones."""
    base, autoaugment = _base_name(name)
    base, attention = _strip_attn(base)
    if attention and base in _PRESETS and _PRESETS[base]["video_loss"] == "none":
        raise UserError(f"{name}: {ATTN_SUFFIX} replaces the shot pooling of a video-level loss; {base} has none")
    if base not in _PRESETS:
        # the nearest name first (`VIVI-Ex4`, `VIVI_Ex(4)`, `VIVI-Ex(4)-Co(10)`): the list alone left the
        # user to spot one missing character among 16 names
        near = difflib.get_close_matches(name, [f"{n}{a}" for n in PRESET_NAMES for a in ("", AA_SUFFIX)], n=1, cutoff=0.8)
        raise UserError(
            f"unknown preset {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; valid presets: {', '.join(PRESET_NAMES)} "
            f"(each also with the suffix {AA_SUFFIX} for AutoAugment, e.g. VIVI-Ex(4){AA_SUFFIX}; those with a video-level "
            f"loss also with {ATTN_SUFFIX} for attention pooling, e.g. VIVI-Ex(4){ATTN_SUFFIX})"
        )
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    p = _PRESETS[base]
    cfg = RunConfig(preset=name, scale=scale)
    shots_per_batch = 32 if scale == "tiny" else 2048  # Table 5: V * K = 2048 shots (exemplars) per batch
    if p["mode"] == "pairs":  # VITO: as many frames per step as VIVI-Ex(4) (V*K*F = 8 * shots_per_batch)
        shots_per_batch = 4 * shots_per_batch
    cfg.data.mode = p["mode"]
    cfg.data.shots = p["shots"]
    cfg.data.frames = p["frames"]
    cfg.data.videos = shots_per_batch // p["shots"]
    cfg.model.predictor = p["predictor"]
    cfg.model.pooling = "attention" if attention else p.get("pooling", "mean")
    cfg.loss.infonce_negatives = "local" if p["predictor"] == "mlp" else "global"
    cfg.loss.video_loss = p["video_loss"]
    cfg.loss.frame_loss = p.get("frame_loss", "exemplar")
    cfg.model.backbone.width_factor = p.get("width_factor", 1)
    cfg.model.backbone.norm = p.get("norm", "batchnorm")
    cfg.optim.weight_decay = p.get("weight_decay", _WEIGHT_DECAY)
    cfg.loss.video_weight = p.get("video_weight", cfg.loss.video_weight)
    cfg.loss.triplet_group = _TRIPLET_GROUP[scale]
    cfg.data.labelled_fraction = p.get("labelled_fraction", 1.0)
    paper_lr, labelled_batch = p.get("lr", 0.8), p.get("labelled_batch", 0)
    if scale == "paper":
        cfg.model.backbone = BackboneConfig(
            layers=[3, 4, 6, 3], channels=[256, 512, 1024, 2048], stem_chs=64,
            width_factor=p.get("width_factor", 1), basic=False, norm=cfg.model.backbone.norm,
        )
        cfg.data.labelled_batch = labelled_batch
        cfg.data.load_size, cfg.augment.image_size = 256, 224
        cfg.data.workers = 8
        cfg.data.cache_mb = 0  # 224-px frames of a large corpus: few hits, and 8 workers' memory
        cfg.optim.lr, cfg.optim.steps = paper_lr, p["schedule"][0]
        cfg.ckpt_every, cfg.log_every = 2000, 50
        cfg.optim.ema_momentum = 0.996
        cfg.model.attention_hidden, cfg.model.projector_hidden, cfg.model.projector_dim = 512, 4096, 256
    else:  # lr and image batch scaled as the shot batch (2048 -> 32); at least 8 images for a useful CE
        cfg.optim.lr, cfg.optim.steps = paper_lr / 8, 400
        cfg.data.labelled_batch = max(8, labelled_batch * shots_per_batch // 2048) if labelled_batch else 0
    cfg.optim.warmup_steps, cfg.optim.decay_steps = _scale_schedule(cfg.optim.steps, p["schedule"])
    if autoaugment:  # Appendix B: with AA the video-level loss weight is halved
        cfg.augment.autoaugment = True
        cfg.loss.video_weight /= 2
    return cfg


def batch_lr_note(cfg: RunConfig) -> str | None:
    """A warning when the batch was changed but the learning rate was not: a preset's lr is set for
    its own batch, and the paper's (0.8 for 2048 shots) blows a ResNet-50 up within a few steps of
    a one-GPU batch. The suggestion follows the rule that sizes the tiny scale (square root)."""
    try:
        base = preset(cfg.preset, cfg.scale)
    except UserError:  # a config built by hand names no preset
        return None
    batch, base_batch = cfg.shots_per_batch, base.shots_per_batch
    if batch == base_batch or cfg.optim.lr != base.optim.lr:
        return None
    scaled = base.optim.lr * math.sqrt(batch / base_batch)
    # what changed it: data.shots=3 was reported as "data.videos=8 changes the batch"
    changed = [f"{k}={getattr(cfg.data, k)}" for k in ("videos", "shots") if getattr(cfg.data, k) != getattr(base.data, k)]
    size = "smaller" if batch < base_batch else "larger"
    return (f"data.{' and data.'.join(changed) or 'videos'} {'change' if len(changed) > 1 else 'changes'} the batch "
            f"from the preset's {base_batch} to {batch} shots, but optim.lr={cfg.optim.lr:g} is still the preset's, set "
            f"for {base_batch}; a {size} batch needs a {size} lr, e.g. --set optim.lr={scaled:.2g} (square-root "
            "scaling, as the tiny scale is derived)")


# Fields that take a count or "auto" (resolved where the run starts, on its machine).
COUNT_OR_AUTO = ("data.workers",)


def _parse_value(raw: str, current: Any, key: str, item: type | None = None) -> Any:
    """Cast a command-line string to the type of the field it overrides (``item``: a list field's item type)."""
    if key in COUNT_OR_AUTO:
        if raw.strip().lower() == "auto":
            return "auto"
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"--set {key}={raw}: expected a number or auto") from None
    try:
        if isinstance(current, bool):  # spaces around the word as around a number (`flag= true` was refused)
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            return _parse_int(raw, key)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, list):
            return _parse_list(raw, current, key, item)
        return raw
    except (ValueError, json.JSONDecodeError):
        raise UserError(f"--set {key}={raw}: expected a value of type {type(current).__name__}") from None


def _parse_int(raw: str, key: str) -> int:
    """A count as typed: ``1000``, and also ``1e3`` or ``1000.0`` (whole numbers written as floats, as a
    list field already took them in ``[1e3]``); ``2.5`` is refused by name instead of rounded."""
    try:
        return int(raw)
    except ValueError:
        value = float(raw)  # a ValueError here: not a number at all
    if not value.is_integer():
        raise UserError(f"--set {key}={raw}: expected a whole number")
    return int(value)


def _parse_list(raw: str, current: list, key: str, item: type | None = None) -> list:
    """``1,1`` or ``[1, 1]`` as a list of the field's item type; a nested list, a number for a
    word or ``1.5`` for a count is refused by name (``int([2])`` was a TypeError traceback).

    ``item``: the item type the field declares. It was read off the current value's first item, so an
    empty list (``model.class_names``, or a list emptied by an earlier ``--set``) took floats:
    ``model.class_names=a,b`` was refused, ``optim.decay_steps=,`` then ``=300.5`` kept 300.5. An empty
    item (``0.2,,1``) is refused too: it silently made a list one item shorter than typed."""
    kind = item or (type(current[0]) if current else float)
    want = {int: "whole numbers", float: "numbers", str: "words"}.get(kind, kind.__name__)
    example = ",".join(map(str, current)) or {str: "a,b"}.get(kind, "1,2")
    bad = UserError(f"--set {key}={raw}: expected a list of {want}, e.g. {key}={example}")
    try:
        if raw.strip().startswith("["):
            value = json.loads(raw)
        else:
            value = [x.strip() for x in raw.split(",")] if raw.strip() else []
            if any(not x for x in value):
                raise bad
    except json.JSONDecodeError:
        raise bad from None
    if not isinstance(value, list) or any(isinstance(v, (list, dict, bool)) or v is None for v in value):
        raise bad
    try:
        parsed = [kind(v) for v in value]
    except (TypeError, ValueError):
        raise bad from None
    if kind is int and any(isinstance(v, float) and not v.is_integer() for v in value):
        raise bad  # int(1.5) would be 1, silently
    return parsed


def _is_setting(node: Any, name: str) -> bool:
    """Whether ``name`` is a field of the config dataclass ``node`` (methods and properties are not)."""
    return dataclasses.is_dataclass(node) and name in {f.name for f in dataclasses.fields(node)}


def _setting_names(node: Any, prefix: str = "") -> list[str]:
    """Every settable dotted name (``optim.lr``, ``model.backbone.layers``, ...), in config order."""
    names = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        names += _setting_names(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
    return names


def _unknown_setting(cfg: RunConfig, key: str) -> UserError:
    """The one line for a key that names no setting, with the nearest ones: ``optim.step`` ->
    ``optim.steps``, ``lr`` -> ``optim.lr``, ``optim`` (a section) -> its fields (the bare "unknown
    setting" left the user to read the whole `vivi presets --json`)."""
    names = _setting_names(cfg)
    key = key.strip()
    section = [n for n in names if n.startswith(f"{key}.")]
    if key and section:
        return UserError(f"--set {key}: is a section, not a setting; set one of its fields, e.g. {section[0]}=... "
                         f"({', '.join(n[len(key) + 1:] for n in section[:8])}{', ...' if len(section) > 8 else ''})")
    leaf = key.rsplit(".", 1)[-1]
    near = [n for n in names if n.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(key, names, n=2, cutoff=0.75)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return UserError(f"--set {key}: unknown setting{hint} (`vivi presets NAME --json` lists every field)")


# Set by `--preset` / `--scale`, which choose every other value: through --set they only relabelled the
# run (`--set scale=paper` trained the tiny model under the name "paper").
CHOSEN_BY_FLAG = {"preset": "--preset", "scale": "--scale"}
SCHEDULE_KEYS = ("optim.warmup_steps", "optim.decay_steps")


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.field=value`` overrides; a changed ``optim.steps`` rescales the schedule.

    Only the schedule settings not given are rescaled: giving ``optim.warmup_steps`` with a shorter
    ``optim.steps`` kept the preset's decay milestones, beyond the end of the run, so the lr never
    decayed. A key given twice takes its last value, and says so."""
    steps_before = cfg.optim.steps
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item}: expected key=value, e.g. optim.lr=0.05")
        key = key.strip()
        if key in CHOSEN_BY_FLAG:
            raise UserError(f"--set {key}: is chosen with {CHOSEN_BY_FLAG[key]}, which sets every other value from it; "
                            f"here it would only relabel the run")  # fmt: skip
        target: Any = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if not _is_setting(target, part):
                raise _unknown_setting(cfg, key)
            target = getattr(target, part)
        leaf = parts[-1]
        # a field, not any attribute: `to_dict` (a method) or `shots_per_batch` (a property) were
        # set and failed later with a traceback
        if not _is_setting(target, leaf) or dataclasses.is_dataclass(getattr(target, leaf)):
            raise _unknown_setting(cfg, key)
        if key in given and given[key] != raw:
            warn(f"--set {key} is given twice ({key}={given[key]}, then {key}={raw}): the last, {raw}, is used")
        given[key] = raw
        item_type = typing.get_args(typing.get_type_hints(type(target)).get(leaf))
        setattr(target, leaf, _parse_value(raw, getattr(target, leaf), key, item_type[0] if len(item_type) == 1 else None))
    if cfg.optim.steps != steps_before:
        sched = _PRESETS.get(_base_name(cfg.preset)[0], {}).get("schedule", _SHOT_SCHEDULE)
        warmup, decays = _scale_schedule(cfg.optim.steps, sched)
        if "optim.warmup_steps" not in given:
            cfg.optim.warmup_steps = warmup
        if "optim.decay_steps" not in given:
            cfg.optim.decay_steps = decays
    validate(cfg)
    return cfg


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every numeric setting as ``(dotted name, value)``, list items included."""
    found = []
    for f in dataclasses.fields(node):
        value, name = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found += _numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((name, value))
        elif isinstance(value, list):
            found += [(name, v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return found


# Settings that count something per run: 0 or less would train nothing or divide by zero mid-run.
# The head and predictor widths too: `model.exemplar_dim=0` trained a 0-d embedding (a triplet loss of
# nothing, exit 0), `model.lstm_layers=0` failed in torch after the data was read.
AT_LEAST_ONE = ("optim.steps", "log_every", "ckpt_every", "keep_checkpoints", "data.load_size", "augment.image_size",
                "model.backbone.width_factor", "model.backbone.stem_chs", "model.exemplar_dim", "model.video_dim",
                "model.attention_hidden", "model.projector_hidden", "model.projector_dim", "model.lstm_hidden",
                "model.lstm_layers", "model.mlp_hidden", "model.mlp_out", "model.order_hidden", "dist_timeout_s")  # fmt: skip
NOT_NEGATIVE = ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.grad_clip", "loss.video_weight", "loss.triplet_group",
                "loss.sup_weight", "loss.margin", "optim.warmup_steps", "data.labelled_batch", "model.classes",
                "augment.brightness", "augment.contrast", "augment.saturation", "augment.hue")  # fmt: skip
# Probabilities: a value outside [0, 1] was compared with a uniform draw, i.e. silently 0 or 1.
PROBABILITIES = ("augment.color_prob", "augment.gray_prob")
# Divisors of the scores: 0 was a NaN loss at step 0, after the data was read; below 0 it inverts the loss.
TEMPERATURES = ("loss.infonce_temperature", "loss.vito_temperature")
PREDICTORS = ("lstm", "mlp", "none")


def validate(cfg: RunConfig) -> None:
    """Reject combinations that cannot train, with the reason."""
    numbers = _numbers(cfg)
    for name, value in numbers:
        if not math.isfinite(value):
            raise UserError(f"{name}={value}: expected a finite number")
    values = dict(numbers)
    for name in AT_LEAST_ONE:
        if values[name] < 1:
            raise UserError(f"{name}={values[name]}: expected >= 1")
    for name in NOT_NEGATIVE:
        if values[name] < 0:
            raise UserError(f"{name}={values[name]}: expected >= 0")
    for name in PROBABILITIES:
        if not 0 <= values[name] <= 1:
            raise UserError(f"{name}={values[name]}: expected a probability in [0, 1]")
    for name in TEMPERATURES:
        if values[name] <= 0:
            raise UserError(f"{name}={values[name]}: expected > 0 (the scores are divided by it)")
    _validate_schedule(cfg.optim)
    if cfg.dist_timeout_s > MAX_DIST_TIMEOUT_S:  # 1e30 was an OverflowError traceback (timedelta) at the start
        raise UserError(f"dist_timeout_s={cfg.dist_timeout_s}: expected 1 to {MAX_DIST_TIMEOUT_S} seconds (a week)")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed={cfg.seed}: expected an integer from 0 to {MAX_SEED} (2**63 - 1)")
    if cfg.augment.where not in ("device", "loader"):
        raise UserError(f"augment.where={cfg.augment.where!r}: expected 'device' or 'loader'")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"amp={cfg.amp!r}: expected 'auto', 'bf16', 'fp16' or 'off'")
    d = cfg.data
    if min(d.videos, d.shots, d.frames) < 1:
        raise UserError("data.videos, data.shots and data.frames must be >= 1")
    loss = cfg.loss
    if loss.frame_loss not in ("exemplar", "rotation", "vito", "supervised"):
        raise UserError(f"loss.frame_loss={loss.frame_loss!r}: expected 'exemplar', 'rotation', 'vito' or 'supervised'")
    if loss.frame_loss == "supervised" and (d.mode != "images" or loss.video_loss != "none"):
        raise UserError("loss.frame_loss=supervised trains on a labelled image folder alone (data.mode=images, no video loss)")
    if (loss.frame_loss == "vito") != (d.mode == "pairs"):
        raise UserError("loss.frame_loss=vito and data.mode=pairs go together (two displaced views of one shot)")
    if d.mode == "pairs" and (d.shots, d.frames) != (1, 2):
        raise UserError("data.mode=pairs takes data.shots=1 and data.frames=2 (the two views)")
    if d.max_gap < 0:
        raise UserError(f"data.max_gap={d.max_gap}: expected >= 0 samples")
    if d.workers != "auto" and not (type(d.workers) is int and d.workers >= 0):
        raise UserError(f"data.workers={d.workers!r}: expected a number >= 0 or 'auto'")
    if d.cache_mb < 0:
        raise UserError(f"data.cache_mb={d.cache_mb}: expected >= 0")
    if cfg.model.pooling not in ("mean", "attention"):
        raise UserError(f"model.pooling={cfg.model.pooling!r}: expected 'mean' or 'attention'")
    if not 0 <= cfg.optim.ema_momentum <= 1:
        raise UserError(f"optim.ema_momentum={cfg.optim.ema_momentum}: expected a value in [0, 1]")
    if loss.video_loss not in ("infonce", "order", "none"):
        raise UserError(f"loss.video_loss={loss.video_loss!r}: expected 'infonce', 'order' or 'none'")
    if loss.frame_loss == "exemplar" and d.frames < 2:
        raise UserError("loss.frame_loss=exemplar needs data.frames >= 2 views of each exemplar (positives)")
    if loss.video_loss == "infonce":
        if d.shots < 2 or d.videos < 2:
            raise UserError("loss.video_loss=infonce needs data.shots >= 2 and data.videos >= 2 (negatives come from other videos)")
        if cfg.model.predictor == "mlp" and d.shots != 2:
            raise UserError("model.predictor=mlp predicts one shot from the other: it needs data.shots=2")
        if cfg.model.predictor == "none":
            raise UserError("loss.video_loss=infonce needs a predictor (model.predictor=lstm or mlp)")
    if cfg.model.predictor not in PREDICTORS:  # was a ValueError traceback once the model was built, after the data
        raise UserError(f"model.predictor={cfg.model.predictor!r}: expected {', '.join(map(repr, PREDICTORS))}")
    if cfg.model.predictor != "none" and loss.video_loss != "infonce":  # built only for InfoNCE: silently unused
        raise UserError(f"model.predictor={cfg.model.predictor} predicts shots for loss.video_loss=infonce; with "
                        f"loss.video_loss={loss.video_loss} it would be unused (set model.predictor=none)")  # fmt: skip
    if cfg.model.pooling == "attention" and loss.video_loss == "none" and loss.frame_loss != "vito":
        # what `Ex-YT-F+Attn` says: shots are pooled only for a video-level loss; the setting was silently unused
        raise UserError(f"model.pooling=attention pools the shots of a video-level loss; loss.video_loss=none has none "
                        f"(use a preset with one, e.g. VIVI-Ex(4){ATTN_SUFFIX})")  # fmt: skip
    if loss.frame_loss == "exemplar" and loss.triplet_group == 1:  # every group one exemplar: no negatives, loss 0
        raise UserError("loss.triplet_group=1: a group of one exemplar has no negatives, so the triplet loss is 0 "
                        "and trains nothing; use >= 2 (the presets' 16) or 0 for the whole batch")  # fmt: skip
    if loss.infonce_negatives not in ("global", "local"):
        raise UserError(f"loss.infonce_negatives={loss.infonce_negatives!r}: expected 'global' or 'local'")
    if loss.video_loss == "order" and d.shots < 2:
        raise UserError("loss.video_loss=order predicts the order of a video's shots: it needs data.shots >= 2")
    if d.mode not in ("shots", "frame", "images", "pairs"):
        raise UserError(f"data.mode={d.mode!r}: expected 'shots', 'frame', 'images' or 'pairs'")
    if d.mode in ("frame", "images") and d.shots != 1:
        raise UserError(f"data.mode={d.mode} takes one frame or image per example: data.shots must be 1")
    if not 0 < d.labelled_fraction <= 1:
        raise UserError(f"data.labelled_fraction={d.labelled_fraction}: expected a fraction in (0, 1]")
    if d.labelled and d.labelled_batch < 1:
        raise UserError(
            "data.labelled is set but data.labelled_batch=0: use a co-trained preset (e.g. VIVI-Ex(4)-Co(10%)) "
            "or --set data.labelled_batch=N"
        )
    if cfg.augment.image_size > d.load_size:
        raise UserError(f"augment.image_size={cfg.augment.image_size} exceeds data.load_size={d.load_size}")
    if not MIN_IMAGE_SIZE <= cfg.augment.image_size <= MAX_IMAGE_SIZE:  # what `vivi evaluate --image-size` takes
        raise UserError(f"augment.image_size={cfg.augment.image_size}: expected {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (pixels)")
    if cfg.augment.hue > 0.5:  # a hue shift of +-0.5 turns the colour wheel all the way (torchvision's bound)
        raise UserError(f"augment.hue={cfg.augment.hue}: expected 0 to 0.5 (a fraction of the colour wheel each way)")
    _validate_shapes(cfg)


def _validate_schedule(o: OptimConfig) -> None:
    """The schedule as the run will follow it. Each was accepted and trained on without a word: a
    warm-up longer than the run (the lr never reaches ``optim.lr``), a decay milestone past the end
    (never applied), ``decay_factor=0`` (the lr is 0 after the first milestone: the rest trains
    nothing), ``momentum=1.5`` (SGD diverges), ``optim.steps=1e10`` (out of memory building the
    schedule after the data was read)."""
    if o.steps > MAX_STEPS:
        raise UserError(f"optim.steps={o.steps}: expected at most {MAX_STEPS:,} (the paper trains 120,000)")
    if o.warmup_steps > o.steps:
        raise UserError(f"optim.warmup_steps={o.warmup_steps} is longer than optim.steps={o.steps}: the lr would never "
                        "reach optim.lr")  # fmt: skip
    late = [m for m in o.decay_steps if m > o.steps]
    if any(m < 0 for m in o.decay_steps):
        raise UserError(f"optim.decay_steps={o.decay_steps}: expected steps from 0 to optim.steps={o.steps}")
    if late:
        raise UserError(f"optim.decay_steps={o.decay_steps}: {late[0]} is past the run's optim.steps={o.steps}, "
                        "so that decay would never happen")  # fmt: skip
    if not 0 < o.decay_factor <= 1:
        raise UserError(f"optim.decay_factor={o.decay_factor}: expected a factor in (0, 1] "
                        "(each milestone multiplies the lr by it)")  # fmt: skip
    if not o.momentum < 1:
        raise UserError(f"optim.momentum={o.momentum}: expected a value in [0, 1) (at 1 or above SGD's velocity never decays)")


# "auto", or a device torch names: cuda with an optional index, mps, cpu
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
NORMS = ("batchnorm", "groupnorm_ws")


def _validate_shapes(cfg: RunConfig) -> None:
    """The backbone, augmentation and device settings, checked before any data is read: timm zips
    ``layers`` with ``channels`` (``layers=1,1`` silently dropped two stages, ``layers=`` trained a
    stem alone, ``layers=0,...`` failed inside BatchNorm), a crop scale above 1 fell back to the
    whole frame without a word, and ``device=gpu`` was torch's traceback after the data was read."""
    b, m, a = cfg.model.backbone, cfg.model, cfg.augment
    if not b.layers or len(b.layers) != len(b.channels):
        raise UserError(f"model.backbone.layers={b.layers} and model.backbone.channels={b.channels}: expected one "
                        "block count and one channel count per stage, at least one stage")  # fmt: skip
    for name, values in (("model.backbone.layers", b.layers), ("model.backbone.channels", b.channels)):
        if any(v < 1 for v in values):
            raise UserError(f"{name}={values}: expected counts >= 1")
    if b.norm not in NORMS:
        raise UserError(f"model.backbone.norm={b.norm!r}: expected {' or '.join(map(repr, NORMS))}")
    if m.pooling == "attention" and (not m.attention_stages or any(not 0 <= s <= len(b.layers) for s in m.attention_stages)):
        raise UserError(f"model.attention_stages={m.attention_stages}: expected stages from 0 (the stem) to "
                        f"{len(b.layers)} (the last of model.backbone.layers' {len(b.layers)})")  # fmt: skip
    if len(a.crop_scale) != 2 or not 0 < a.crop_scale[0] <= a.crop_scale[1] <= 1:
        raise UserError(f"augment.crop_scale={a.crop_scale}: expected MIN,MAX area fractions with 0 < MIN <= MAX <= 1")
    if len(a.crop_ratio) != 2 or not 0 < a.crop_ratio[0] <= a.crop_ratio[1]:
        raise UserError(f"augment.crop_ratio={a.crop_ratio}: expected MIN,MAX aspect ratios with 0 < MIN <= MAX")
    if not isinstance(cfg.device, str) or not _DEVICE.fullmatch(cfg.device):
        raise UserError(f"device={cfg.device!r}: expected auto, cpu, cuda, cuda:N or mps")


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """Rebuild a config saved by :meth:`RunConfig.to_json` (used on resume and export)."""

    def build(cls: type, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            ftype = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
            kwargs[f.name] = build(ftype, v) if dataclasses.is_dataclass(ftype) else v
        return cls(**kwargs)

    return build(RunConfig, raw)
