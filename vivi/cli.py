"""Command line: turns arguments into library calls, and bad input into one-line errors."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from vivi.config import MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE
from vivi.data.files import output_dir
from vivi.errors import Interrupts, UserError, listed, rank_zero, warn


def _synth(a: argparse.Namespace) -> None:
    from vivi.data.synth import render_corpus

    render_corpus(Path(a.out), videos=a.videos, seed=a.seed, workers=a.workers, size=a.size, fps=a.fps)
    print(f"wrote {a.videos} videos and ground_truth.jsonl to {a.out}")


def _ingest(a: argparse.Namespace) -> None:
    from vivi.data.ingest import check_ingested, ingest

    check_ingested(ingest(
        a.src, Path(a.out), workers=a.workers, fps=a.fps, short_side=a.short_side, min_shots=a.min_shots,
        shard_max_bytes=math.ceil(a.shard_mb * 2**20), jpeg_quality=a.jpeg_quality, detector=a.detector,
        part=a.part, timeout=a.timeout, isolate=True,
    ))  # every video failed: exit 1, the records kept


def _ingest_stats(a: argparse.Namespace) -> None:
    from vivi.data.stats import format_stats, ingest_stats

    if a.o:  # a file there was "afile: File exists", after every index was read
        output_dir(Path(a.o), create=False)
    stats, pngs = ingest_stats(a.outs, Path(a.o) if a.o else None)
    print(format_stats(stats))
    print("wrote " + " and ".join(str(p) for p in pngs))


def _attention(a: argparse.Namespace) -> None:
    from vivi.evaluate.attention import write_attention

    out = output_dir(Path(a.o), create=False)
    written = write_attention(Path(a.run), [Path(f) for f in a.frames], out, limit=a.max)
    print(f"wrote {written[0]} and {len(written) - 1} per-frame images to {a.o}")


def _curate(a: argparse.Namespace) -> None:
    from vivi.data.curate import curate, format_histograms, write_curation
    from vivi.evaluate.classifier import head_classifier, probe_classifier

    output_dir(Path(a.o).parent, create=False)  # before the scoring, not after it
    if Path(a.o).is_dir():
        raise UserError(f"-o {a.o}: is a folder; -o names the list file to write, e.g. {Path(a.o) / 'selected.txt'}")
    inside = Path(a.o).resolve().parent
    if any(inside == Path(o).resolve() for o in a.outs) or (inside / "ingest.json").is_file():
        # `-o D/index.jsonl` replaced the ingest's index with a list of paths: D was lost to every command
        raise UserError(f"-o {a.o}: is inside the ingest folder {inside}, whose files it could replace; "
                        "write the list elsewhere, e.g. -o selected.txt")
    clf = probe_classifier(a.classifier, a.labelled) if a.labelled else head_classifier(Path(a.classifier))
    result = curate([Path(o) for o in a.outs], clf.probabilities, clf.classes, clf.size, a.target, a.frames)
    listing, details = write_curation(result, Path(a.o))
    print(format_histograms(result))
    print(f"wrote {len(result.selected)} of {len(result.sources)} videos to {listing} (details: {details}); "
          f"ingest them with `vivi ingest {listing} OUT`")


def _study(a: argparse.Namespace) -> None:
    from vivi.study import run_study, study_size

    run_study(Path(a.o), study_size("quick" if a.quick else "default", a.seeds, a.steps, a.models, a.protocols))


def _preset(name: str, scale: str):  # -> RunConfig
    """:func:`vivi.config.preset`, with a hint when the name or scale differs from a valid one only
    in case or spaces (``vivi-ex(4)``, ``'VIVI-Ex(4) '``, ``PAPER``): the list of every name alone
    left the user to spot the difference."""
    from vivi.config import AA_SUFFIX, ATTN_SUFFIX, PRESET_NAMES, SCALES, preset

    try:
        return preset(name, scale)
    except UserError as e:
        def key(text: str) -> str:
            return "".join(text.split()).lower()

        names = [f"{n}{attn}{aa}" for n in PRESET_NAMES for attn in ("", ATTN_SUFFIX) for aa in ("", AA_SUFFIX)]
        swapped = name.replace(AA_SUFFIX + ATTN_SUFFIX, ATTN_SUFFIX + AA_SUFFIX)  # the suffixes go +Attn, then -AA
        for given, valid, what in ((name, names, "preset"), (scale, SCALES, "scale")):
            forms = {key(given), key(swapped)} if what == "preset" else {key(given)}
            match = next((v for v in valid if key(v) in forms and v != given), None)
            if match:
                raise UserError(f"unknown {what} {given!r}: did you mean {match!r}? (names are exact, case included)") from None
        raise e from None


def _pretrain(a: argparse.Namespace) -> None:
    from vivi.config import apply_overrides
    from vivi.data.remote import is_url
    from vivi.train.loop import pretrain

    cfg = _preset(a.preset, a.scale)
    overrides = list(a.set or [])
    given = {item.partition("=")[0].strip(): item.partition("=")[2] for item in overrides}
    for key, flag, value in (("seed", "--seed", a.seed), ("optim.steps", "--steps", a.steps),
                             ("data.labelled", "--labelled", a.labelled),
                             ("data.labelled_fraction", "--labelled-fraction", a.labelled_fraction)):  # fmt: skip
        if value is None:
            continue
        if key in given:  # which one wins would depend on the order of the words: neither is guessed
            raise UserError(f"{flag} {value} and --set {key}={given[key]}: the same setting twice; give one")
        overrides.append(f"{key}={value}")
    cfg = apply_overrides(cfg, overrides)
    if cfg.data.mode == "images":
        if a.data or not a.images:
            raise UserError(f"preset {a.preset} trains on an image folder: pass --images DIR (not --data)")
        sources = [a.images]
    else:
        if a.images or not a.data:
            raise UserError(
                f"preset {a.preset} trains on ingested videos: pass --data DIR (--images is for Ex-/Rot-ImageNet)"
            )
        sources = a.data
    out = output_dir(Path(a.out), create=False)  # a file there is found now, not after the data is read
    _check_run_folder(out, [d for d in sources if not is_url(d)])
    run = pretrain(cfg, [d if is_url(d) else Path(d) for d in sources], out)  # a URL stays a string
    if rank_zero():  # the one that wrote it
        print(f"backbone: {run / 'backbone.safetensors'}  (load with vivi.load_backbone({str(run)!r}))")


def _check_run_folder(out: Path, sources: list[str]) -> None:
    """Refuse an --out that is the training data (a run was written into the ingested or image
    folder itself); warn of a folder of other files with no run in it (a mistyped --out, a home
    folder), where checkpoints and TensorBoard files get mixed in. Only a warning: a job's own log
    often lands there first (``> RUN/train.log``, SLURM's ``--output``), and nothing is overwritten."""
    from vivi.data.ingest import SETTINGS_NAME
    from vivi.data.shards import INDEX_NAME
    from vivi.train.run_folder import RUN_FILES

    if not out.is_dir():
        return
    for source in sources:
        if Path(source).is_dir() and out.resolve() == Path(source).resolve():
            raise UserError(f"--out {out}: is also the training data (--data/--images {source}); "
                            "choose a folder of its own for the run")  # fmt: skip
    if (out / INDEX_NAME).is_file() or (out / SETTINGS_NAME).is_file():
        raise UserError(f"--out {out}: is an ingested data folder (it holds {INDEX_NAME}); choose a folder of its own for the run")
    if any((out / name).exists() for name in RUN_FILES):
        return  # a run to resume (or one whose settings the trainer compares and refuses)
    others = sorted(p.name for p in itertools.islice(out.iterdir(), 1000) if not p.name.startswith("."))
    if others:
        warn(f"--out {out}: holds other files ({listed(others)}) and no vivi run yet; the run's files go in beside them")


def _presets(a: argparse.Namespace) -> None:
    from vivi.config import PRESET_NAMES

    names = [a.name] if a.name else list(PRESET_NAMES)
    if a.json:
        print(json.dumps({n: _preset(n, a.scale).to_dict() for n in names}, indent=2))
        return
    for n in names:
        c = _preset(n, a.scale)
        d, o = c.data, c.optim
        print(
            f"{n:<24} V={d.videos:<4} K={d.shots} F={d.frames} mode={d.mode:<5} frame_loss={c.loss.frame_loss:<8} "
            f"predictor={c.model.predictor:<4} pooling={c.model.pooling:<9} "
            f"video_loss={c.loss.video_loss if c.loss.video_loss == 'none' else f'{c.loss.video_loss}*{c.loss.video_weight}'} lr={o.lr} steps={o.steps} "
            f"warmup={o.warmup_steps} decay@{o.decay_steps} wd={o.weight_decay} width={c.model.backbone.width_factor} "
            f"autoaugment={'on' if c.augment.autoaugment else 'off'}"
            + (
                f" norm={c.model.backbone.norm} labelled={d.labelled_batch}/step@{d.labelled_fraction:.0%}"
                f" sup_weight={c.loss.sup_weight}"
                if d.labelled_batch
                else ""
            )
        )
    print(
        "\nco-trained presets (-Co) need --labelled imagefolder:DIR; Ex-/Rot-ImageNet train on --images DIR"
        "\nappend -AA to any name for AutoAugment (video loss weight halved), e.g. VIVI-Ex(4)-AA"
        "\nappend +Attn to a name with a video loss for VITO's attention pooling (pooling=attention), e.g. VIVI-Ex(4)+Attn"
        "\n`vivi presets NAME --json` shows every field; override any with --set section.field=value"
    )


def _evaluate(a: argparse.Namespace) -> None:
    from vivi.data.tasks import load_tasks
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.finetune import FinetuneSetting
    from vivi.evaluate.report import results_table
    from vivi.evaluate.suite import ALL_PROTOCOLS, evaluate_tasks
    from vivi.evaluate.vtab1k import vtab1k_scale

    protocols = (*ALL_PROTOCOLS, "robustness")
    if a.protocol not in protocols:
        raise UserError(f"--protocol {a.protocol}: unknown protocol (available: {', '.join(protocols)})")
    unused = [flag for flag, given, protocol in (("--lr", a.lr is not None, "finetune"),
              ("--steps", a.steps is not None, "finetune"), ("--k", a.k is not None, "robustness"),
              ("--head", a.head, "robustness")) if given and a.protocol != protocol]  # fmt: skip
    if unused:  # silently ignored, they left a user believing the setting was used
        raise UserError(f"{' and '.join(unused)}: not used by --protocol {a.protocol} (--lr and --steps set "
                        "finetune, --k and --head robustness)")
    random_init = a.model.startswith("random") or (a.model.startswith("timm:") and a.model.count(":") == 1)
    if a.seed != 0 and not random_init:
        raise UserError(f"--seed {a.seed}: seeds a random encoder only (random:..., or timm:NAME without weights); "
                        f"{a.model} has trained weights")
    scale = vtab1k_scale(a.scale)
    if a.out is not None and not a.out.strip():  # "" evaluated everything and wrote it nowhere
        raise UserError("--out '': expected a results file name, e.g. --out results/model.json")
    if a.out:
        output_dir(Path(a.out).parent, create=False)  # an unusable --out is found now, not after the first task
        if Path(a.out).is_dir():
            raise UserError(f"--out {a.out}: is a folder; --out names the results file, e.g. {Path(a.out) / 'results.json'}")
    enc = load_encoder(a.model, device=a.device, seed=a.seed, image_size=a.image_size)
    cache, out, name = Path(a.cache) if a.cache else None, Path(a.out) if a.out else None, a.name or enc.name
    if a.protocol == "robustness":
        from vivi.evaluate.robustness import evaluate_robustness, format_robustness

        if out is not None:
            _check_robustness_out(out, name, a.task)
        head = None
        if a.head:
            from vivi.evaluate.classifier import head_classifier

            head = head_classifier(Path(a.model), instead="leave out --head to score it with a probe")
        result = evaluate_robustness(enc, a.task, k=4 if a.k is None else a.k, device=a.device, out_json=out, model_name=name,
                                     cache_dir=cache, head=head)  # fmt: skip
        print(format_robustness(result))
        return
    setting = None
    if a.lr is not None or a.steps is not None:
        default = scale.settings()[0]
        setting = FinetuneSetting(a.lr if a.lr is not None else default.lr, a.steps or default.steps)
    tasks = load_tasks(a.task, cache, vtab_root=Path(a.vtab_root) if a.vtab_root else None)
    results = evaluate_tasks(
        enc.model, tasks, protocol=a.protocol, image_size=enc.image_size, device=a.device,
        out_json=out, model_name=name, scale=a.scale, setting=setting,
        model_source=enc.source, checkpoint=enc.checkpoint,  # a run's folder; a checkpoint's path and step
    )
    print(results_table([results]))


def _check_robustness_out(out: Path, model: str, task: str) -> None:
    """Refuse an --out that holds other results: the robustness protocol writes one task per file,
    and replaced whatever was there (a linear suite's results, another model's) without a word."""
    if not out.exists():
        return
    try:
        previous = json.loads(out.read_text())
        kept = (previous["protocol"], previous["model"], [t["task"] for t in previous["tasks"]])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{out}: exists and is not a vivi results file ({e}); choose another --out") from None
    protocol, other, tasks = kept
    if protocol != "robustness" or other != model:
        raise UserError(f"{out}: holds {protocol} results of {other}, which this robustness evaluation of {model} "
                        "would replace; choose another --out")  # fmt: skip
    source = task.partition(":")[2] if ":" in task else None
    same = [t for t in previous["tasks"] if source is None or Path(str(t.get("source", ""))) == Path(source)]
    if not same:
        raise UserError(f"{out}: holds the robustness result of {', '.join(tasks)}, which a result of {task} "
                        "would replace (one robustness task per file); choose another --out")


def _report(a: argparse.Namespace) -> None:
    from vivi.evaluate.report import find_pair, load_results, results_table, write_report

    results = load_results([Path(p) for p in a.results])
    output_dir(Path(a.o), create=False)
    pairs = [find_pair(results, a.diff)] if a.diff else None
    md, png = write_report(results, Path(a.o), pairs=pairs, runs=[Path(r) for r in a.runs or []])
    print(results_table(results))
    print(f"wrote {md} and its plots in {md.parent}")


def _demo(a: argparse.Namespace) -> None:
    from vivi.demo import run_demo

    run_demo(Path(a.out), seeds=a.seeds, videos=a.videos, steps=a.steps)


def _positive(kind: type, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind``, above 0 (or at least ``minimum``; at most
    ``maximum``), so that 0 is not silently read as "the default", a negative rate is not a
    traceback and a huge image size is not an allocator's crash."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number of type {kind.__name__}") from None
        above = value > 0 if minimum is None else value >= minimum
        if not (math.isfinite(value) and above and (maximum is None or value <= maximum)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number {_bounds(minimum, maximum)}")
        return value

    return parse


def _bounds(minimum: float | None, maximum: float | None) -> str:
    """``> 0``, ``>= 1`` or ``from 8 to 1024``: the range :func:`_positive` accepts, in words."""
    low = "> 0" if minimum is None else f">= {minimum}"
    if maximum is None:
        return low
    return f"from {minimum} to {maximum}" if minimum is not None else f"{low} and <= {maximum}"


SEED = _positive(int, 0, MAX_SEED)


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``),
    checked before any weights are read, so a typo is not blamed on the weights file."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: vivi runs on cpu, cuda or mps")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vivi",
        description="Learn image representations from unlabeled video: frames -> shots -> videos (VIVI).",
        epilog="Start with `vivi demo`; every command takes --help.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render the built-in video world as mp4 files + ground_truth.jsonl")
    s.add_argument("out")
    s.add_argument("--videos", type=int, default=160)
    s.add_argument("--seed", type=SEED, default=0)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--size", type=int, default=96)
    s.add_argument("--fps", type=float, default=4.0)
    s.set_defaults(func=_synth)

    s = sub.add_parser("ingest", help="decode videos once, find shots, write shards + index.jsonl (resumable)")
    s.add_argument("src", help="a folder (searched recursively) or a text file of paths")
    s.add_argument("out")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--fps", type=float, default=1.0, help="frames sampled per second inside shots")
    s.add_argument("--short-side", type=int, default=256, help="stored frames' short side in pixels")
    s.add_argument("--min-shots", type=int, default=1, help="videos with fewer shots are recorded as skipped")
    s.add_argument(
        "--detector", default="histogram", choices=["histogram", "content", "adaptive"],
        help="shot detector: ours (colour histograms; gradual transitions excluded from shots) or"
        " PySceneDetect's ContentDetector/AdaptiveDetector (hard cuts; pip install 'vivi[scenedetect]')",
    )
    s.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="seconds one video may take; a slower one (or a crashed worker) becomes an error record",
    )
    s.add_argument("--jpeg-quality", type=int, default=90)
    s.add_argument("--shard-mb", type=_positive(float), default=256.0, help="shard size bound in MiB")
    s.add_argument(
        "--part", metavar="i/N",
        help="ingest only part i of N (0-based): the sources whose position in the listing (a folder: sorted;"
        " a list file: its order) modulo N is i;"
        " give each part its own OUT, e.g. OUT/part-$SLURM_ARRAY_TASK_ID",
    )
    s.set_defaults(func=_ingest)

    s = sub.add_parser("ingest-stats", help="summarise one or several ingest folders as one dataset, with histograms")
    s.add_argument(
        "outs", nargs="+", metavar="OUT", help="ingest output folders or their URLs (e.g. the parts of an array job)"
    )
    s.add_argument("-o", metavar="DIR", help="where the PNG histograms go (default: the first OUT; needed for a URL)")
    s.set_defaults(func=_ingest_stats)

    s = sub.add_parser("pretrain", help="self-supervised pretraining with a paper preset")
    s.add_argument("--preset", required=True, help="a model name of the paper, e.g. VIVI-Ex(4); see `vivi presets`")
    s.add_argument(
        "--data", action="append", help="an ingested folder or its URL, e.g. s3://bucket/part-0 (repeat for several)"
    )
    s.add_argument("--images", help="an image folder (DIR/* or DIR/<class>/*): the data of Ex-/Rot-ImageNet")
    s.add_argument("--labelled", help="co-training's labelled images: imagefolder:DIR (DIR/<class>/*)")
    s.add_argument(
        "--labelled-fraction", type=float, help="class-balanced fraction of them to use (data.labelled_fraction)"
    )
    s.add_argument("--out", required=True, help="the run folder (re-running resumes it)")
    s.add_argument("--scale", default="tiny", help="tiny (CPU) | paper (ResNet-50 v2, Table 5)")
    s.add_argument("--seed", type=SEED, default=None)
    s.add_argument("--steps", type=int, default=None, help="shorthand for --set optim.steps=N (schedule rescaled)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    s.set_defaults(func=_pretrain)

    s = sub.add_parser("attention", help="overlay a run's learned attention on frames (VITO, +Attn presets)")
    s.add_argument("run", help="a run folder trained with model.pooling=attention")
    s.add_argument("frames", nargs="+", help="image files or folders of images")
    s.add_argument("-o", required=True, metavar="DIR")
    s.add_argument("--max", type=_positive(int), default=16, help="at most this many frames")
    s.set_defaults(func=_attention)

    s = sub.add_parser("curate", help="select videos whose class histogram matches a target (VideoNet-style)")
    s.add_argument("outs", nargs="+", metavar="OUT", help="ingest folders whose videos are scored")
    s.add_argument(
        "--classifier", required=True,
        help="a co-trained run (its head), or with --labelled any encoder: RUN | BACKBONE.safetensors | timm:NAME",
    )
    s.add_argument("--labelled", help="imagefolder:DIR to fit a linear classifier on the encoder's features")
    s.add_argument("--target", default="uniform", help="uniform | a JSON file of class -> weight; a class no video "
                   "is classified as is left out of it, with a warning (the closest selection is kept)")
    s.add_argument("--frames", type=_positive(int), default=8, help="frames scored per video (evenly spaced)")
    s.add_argument("-o", required=True, metavar="LIST", help="the selected sources, one per line (+ LIST.json)")
    s.set_defaults(func=_curate)

    s = sub.add_parser("study", help="the paper's ablation on the built-in world, seeds, medians, claims checked")
    s.add_argument("-o", required=True, metavar="DIR", help="everything goes here; re-running resumes")
    s.add_argument("--quick", action="store_true", help="minutes: 40 videos, 20 steps, 1 seed, 3 tasks, linear only")
    s.add_argument("--seeds", type=_positive(int), help="pretraining seeds (default 3)")
    s.add_argument("--steps", type=_positive(int), help="pretraining steps per run (default 1200)")
    s.add_argument("--models", help="comma-separated presets (default: the paper's ablation + VITO, +Attn); "
                   "PRESET@key=value[@key=value] is a variant with settings changed, e.g. VIVI-Ex(4)@loss.video_weight=0.3")
    s.add_argument("--protocols", help="comma-separated (default: linear; linear,vtab1k adds ~3-5 min per run)")
    s.set_defaults(func=_study)

    s = sub.add_parser("presets", help="list the presets with their resolved settings")
    s.add_argument("name", nargs="?")
    s.add_argument("--scale", default="tiny")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_presets)

    s = sub.add_parser(
        "evaluate",
        help="transfer evaluation of a run, a backbone file, a training checkpoint, timm:NAME[:WEIGHTS] or random[:tiny|paper]",
    )
    s.add_argument(
        "model",
        help="RUN | BACKBONE.safetensors | RUN/checkpoints/step_N.pt (a training checkpoint's backbone, evaluated "
        "as the run's final one would be, with RUN/config.json; named RUN@stepN) | "
        "timm:NAME[:WEIGHTS.safetensors|.pth] | random[:tiny|paper]",
    )
    s.add_argument(
        "--task", required=True,
        help="mini-vtab[:TASK,...] | vtab-1k | vtab:TASK[,TASK] | imagefolder:DIR; robustness: world[:DIR] | frames:DIR",
    )
    s.add_argument("--protocol", default="linear", help="linear | knn | finetune | vtab1k | robustness | corruptions")
    s.add_argument("--scale", default="tiny", help="fine-tune sizes: tiny (CPU) | paper (VTAB's sweep, batch 512)")
    s.add_argument("--lr", type=_positive(float), help="finetune: learning rate (default: the scale's first)")
    s.add_argument("--steps", type=_positive(int), help="finetune: steps (default: the scale's first)")
    s.add_argument(
        "--k", type=_positive(int, minimum=0), help="robustness: neighbours within k frames must be right too (default 4)"
    )
    s.add_argument(
        "--head", action="store_true",
        help="robustness: classify with a co-trained run's own head (classes matched by name) instead of a probe",
    )
    s.add_argument("--vtab-root", help="folder holding the VTAB data (default: $VIVI_VTAB_ROOT)")
    s.add_argument(
        "--image-size", type=_positive(int, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), metavar="PX",
        help=f"input resolution, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} (default: the model's own; timm: its default input size, else 224)",
    )
    s.add_argument("--out", help="results JSON (resumable task by task)")
    s.add_argument("--name", help="model name shown in tables")
    s.add_argument("--cache", help="where the built-in suite is rendered (default: $VIVI_CACHE or ~/.cache/vivi)")
    s.add_argument("--device", type=_device, default="cpu")
    s.add_argument("--seed", type=SEED, default=0, help="seed of a random encoder (random:..., or timm:NAME without weights)")
    s.set_defaults(func=_evaluate)  # results are written after each task

    s = sub.add_parser("report", help="tables and plots comparing result files")
    s.add_argument("results", nargs="+")
    s.add_argument("-o", required=True, metavar="DIR")
    s.add_argument(
        "--diff", nargs=2, metavar=("BASE", "OTHER"),
        help="difference bars OTHER - BASE (model names); default: every model against the first",
    )
    s.add_argument(
        "--runs", nargs="+", metavar="RUN",
        help="run folders whose metrics.jsonl to plot (default: the runs the results were evaluated from)",
    )
    s.set_defaults(func=_report)

    s = sub.add_parser("demo", help="synth -> ingest -> pretrain Ex-YT-F and VIVI-Ex(4) -> evaluate -> table")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--seeds", type=_positive(int), default=1, help="repeat pretraining and evaluation with this many seeds")
    s.add_argument("--videos", type=_positive(int), default=None)
    s.add_argument("--steps", type=_positive(int), default=None)
    s.set_defaults(func=_demo)
    return p


def _out_of_memory(error: BaseException) -> bool:
    """An allocation that failed (Python's, NumPy's, torch's on the CPU or an accelerator), not a bug."""
    torch = sys.modules.get("torch")  # not imported: the error cannot be torch's
    if isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)  # torch's CPU allocator


def _allocation(error: BaseException) -> str:
    """``tried to allocate 30000000000 bytes``: the size from the allocator's message, without its C++ prefix."""
    found = re.search(r"(?:tried to|unable to) allocate [\d.,]+ ?(?:bytes|[KMGTPE]i?B)", str(error), re.IGNORECASE)
    return found.group(0).strip() if found else type(error).__name__


def _said(e: UserError) -> int:
    """Print ``e`` on one line (under torchrun, once: by rank 0 when every rank raises it) and return its exit code."""
    if rank_zero() or not e.same_on_every_rank:
        print(f"vivi: {e.prefix}{e}", file=sys.stderr)
    return e.exit_code


def _error_behind(interrupt: KeyboardInterrupt) -> UserError | None:
    """The error an interrupt cut short on its way out, where that error says more (``over_interrupt``).
    Under torchrun, when one process dies the others' collective fails (``PeerStopped``, naming the
    last checkpoint) and torchrun SIGTERMs them while they tear down: "interrupted" hid what had
    happened and where to resume."""
    seen, depth = interrupt.__context__, 0
    while seen is not None and depth < 20:
        if isinstance(seen, UserError) and seen.over_interrupt:
            return seen
        seen, depth = seen.__context__, depth + 1
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        # SIGTERM (a batch system's time limit, `docker stop`) stops every command as Ctrl-C does, with the
        # one-line "interrupted; re-run" rather than a silent death, from the first moment: parsing
        # --device alone imports torch (~1 s). `vivi pretrain` takes the signals over while it trains.
        with Interrupts():
            args = build_parser().parse_args(argv)
            args.func(args)
    except UserError as e:
        return _said(e)
    except KeyboardInterrupt as e:
        if (cause := _error_behind(e)) is not None:
            return _said(cause)
        print("vivi: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vivi presets --json | head`: the reader has all it wanted
        # Python would flush stdout again at exit, into the closed pipe, and print a second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe stopped
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):  # any other RuntimeError is a bug: keep the traceback
            raise
        print(f"vivi: error: out of memory ({_allocation(e)}); use smaller inputs (e.g. a lower --image-size) "
              "or a machine with more memory", file=sys.stderr)  # fmt: skip
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        # a full disk, a read-only or vanished folder, a permission: the user's to fix, not a bug
        print(f"vivi: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
