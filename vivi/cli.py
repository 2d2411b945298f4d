"""Command line: turns arguments into library calls, and bad input into one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vivi.errors import UserError


def _synth(a: argparse.Namespace) -> None:
    from vivi.data.synth import render_corpus

    render_corpus(Path(a.out), videos=a.videos, seed=a.seed, workers=a.workers, size=a.size, fps=a.fps)
    print(f"wrote {a.videos} videos and ground_truth.jsonl to {a.out}")


def _ingest(a: argparse.Namespace) -> None:
    from vivi.data.ingest import ingest

    ingest(
        a.src, Path(a.out), workers=a.workers, fps=a.fps, short_side=a.short_side, min_shots=a.min_shots,
        shard_max_bytes=int(a.shard_mb * 2**20), jpeg_quality=a.jpeg_quality, detector=a.detector,
        part=a.part,
    )


def _ingest_stats(a: argparse.Namespace) -> None:
    from vivi.data.stats import format_stats, ingest_stats

    stats, pngs = ingest_stats(a.outs, Path(a.o) if a.o else None)
    print(format_stats(stats))
    print("wrote " + " and ".join(str(p) for p in pngs))


def _pretrain(a: argparse.Namespace) -> None:
    from vivi.config import apply_overrides, preset
    from vivi.train.loop import pretrain

    cfg = preset(a.preset, a.scale)
    overrides = list(a.set or [])
    if a.seed is not None:
        overrides.append(f"seed={a.seed}")
    if a.steps is not None:
        overrides.append(f"optim.steps={a.steps}")
    if a.labelled is not None:
        overrides.append(f"data.labelled={a.labelled}")
    if a.labelled_fraction is not None:
        overrides.append(f"data.labelled_fraction={a.labelled_fraction}")
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
    run = pretrain(cfg, [Path(d) for d in sources], Path(a.out))
    print(f"backbone: {run / 'backbone.safetensors'}  (load with vivi.load_backbone({str(run)!r}))")


def _presets(a: argparse.Namespace) -> None:
    from vivi.config import PRESET_NAMES, preset

    names = [a.name] if a.name else list(PRESET_NAMES)
    if a.json:
        print(json.dumps({n: preset(n, a.scale).to_dict() for n in names}, indent=2))
        return
    for n in names:
        c = preset(n, a.scale)
        d, o = c.data, c.optim
        print(
            f"{n:<24} V={d.videos:<4} K={d.shots} F={d.frames} mode={d.mode:<5} frame_loss={c.loss.frame_loss:<8} "
            f"predictor={c.model.predictor:<4} "
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
        "\n`vivi presets NAME --json` shows every field; override any with --set section.field=value"
    )


def _evaluate(a: argparse.Namespace) -> None:
    from vivi.data.tasks import load_tasks
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.report import results_table
    from vivi.evaluate.suite import PROTOCOLS, evaluate_tasks

    if a.protocol not in PROTOCOLS:
        raise UserError(f"--protocol {a.protocol}: unknown protocol (available: {', '.join(PROTOCOLS)})")
    enc = load_encoder(a.model, device=a.device, seed=a.seed)
    tasks = load_tasks(a.task, Path(a.cache) if a.cache else None)
    results = evaluate_tasks(
        enc.model, tasks, protocol=a.protocol, image_size=enc.image_size, device=a.device,
        out_json=Path(a.out) if a.out else None, model_name=a.name or enc.name,
    )
    print(results_table([results]))


def _report(a: argparse.Namespace) -> None:
    from vivi.evaluate.report import load_results, results_table, write_report

    results = load_results([Path(p) for p in a.results])
    md, png = write_report(results, Path(a.o))
    print(results_table(results))
    print(f"wrote {md} and {png}")


def _demo(a: argparse.Namespace) -> None:
    from vivi.demo import run_demo

    run_demo(Path(a.out), seeds=a.seeds, videos=a.videos, steps=a.steps)


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
    s.add_argument("--seed", type=int, default=0)
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
    s.add_argument("--detector", default="histogram", help="shot detector (see vivi.data.shots.DETECTORS)")
    s.add_argument("--jpeg-quality", type=int, default=90)
    s.add_argument("--shard-mb", type=float, default=256.0, help="shard size bound in MiB")
    s.add_argument(
        "--part", metavar="i/N",
        help="ingest only part i of N (0-based): the sources whose position in the sorted listing modulo N is i;"
        " give each part its own OUT, e.g. OUT/part-$SLURM_ARRAY_TASK_ID",
    )
    s.set_defaults(func=_ingest)

    s = sub.add_parser("ingest-stats", help="summarise one or several ingest folders as one dataset, with histograms")
    s.add_argument("outs", nargs="+", metavar="OUT", help="ingest output folders (e.g. the parts of an array job)")
    s.add_argument("-o", metavar="DIR", help="where the PNG histograms go (default: the first OUT)")
    s.set_defaults(func=_ingest_stats)

    s = sub.add_parser("pretrain", help="self-supervised pretraining with a paper preset")
    s.add_argument("--preset", required=True, help="a model name of the paper, e.g. VIVI-Ex(4); see `vivi presets`")
    s.add_argument("--data", action="append", help="an ingested folder (repeat for several)")
    s.add_argument("--images", help="an image folder (DIR/* or DIR/<class>/*): the data of Ex-/Rot-ImageNet")
    s.add_argument("--labelled", help="co-training's labelled images: imagefolder:DIR (DIR/<class>/*)")
    s.add_argument(
        "--labelled-fraction", type=float, help="class-balanced fraction of them to use (data.labelled_fraction)"
    )
    s.add_argument("--out", required=True, help="the run folder (re-running resumes it)")
    s.add_argument("--scale", default="tiny", help="tiny (CPU) | paper (ResNet-50 v2, Table 5)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--steps", type=int, default=None, help="shorthand for --set optim.steps=N (schedule rescaled)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    s.set_defaults(func=_pretrain)

    s = sub.add_parser("presets", help="list the presets with their resolved settings")
    s.add_argument("name", nargs="?")
    s.add_argument("--scale", default="tiny")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_presets)

    s = sub.add_parser("evaluate", help="transfer evaluation of a run, a backbone file, or random[:tiny|paper]")
    s.add_argument("model")
    s.add_argument("--task", required=True, help="mini-vtab | mini-vtab:TASK[,TASK] | imagefolder:DIR")
    s.add_argument("--protocol", default="linear")
    s.add_argument("--out", help="results JSON (resumable task by task)")
    s.add_argument("--name", help="model name shown in tables")
    s.add_argument("--cache", help="where the built-in suite is rendered (default: $VIVI_CACHE or ~/.cache/vivi)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0, help="seed of a random encoder")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("report", help="tables and plots comparing result files")
    s.add_argument("results", nargs="+")
    s.add_argument("-o", required=True, metavar="DIR")
    s.set_defaults(func=_report)

    s = sub.add_parser("demo", help="synth -> ingest -> pretrain Ex-YT-F and VIVI-Ex(4) -> evaluate -> table")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--seeds", type=int, default=1, help="repeat pretraining and evaluation with this many seeds")
    s.add_argument("--videos", type=int, default=None)
    s.add_argument("--steps", type=int, default=None)
    s.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"vivi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vivi: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
