"""``vivi demo``: the whole path at laptop scale, each stage resumable.

synth -> ingest -> pretrain Ex-YT-F and VIVI-Ex(4) -> evaluate them and a random encoder on
mini-VTAB with the linear protocol -> one table and a bar plot. Re-running the command skips
every stage whose output is already complete.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

from vivi.config import apply_overrides, preset

DEMO_PRESETS = ("Ex-YT-F", "VIVI-Ex(4)")
DEMO_VIDEOS = 160


def slug(name: str) -> str:
    """A file-name-friendly form of a preset name: ``VIVI-Ex(4)`` -> ``vivi-ex4``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("(", "").replace(")", "")).strip("-")


def _stage(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"      done in {time.perf_counter() - start:.0f}s", flush=True)


def run_demo(out: Path, seeds: int = 1, videos: int | None = None, steps: int | None = None) -> list[dict]:
    from vivi.data.ingest import ingest
    from vivi.data.synth import render_corpus
    from vivi.data.tasks import load_tasks
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.report import results_table, write_report
    from vivi.evaluate.suite import evaluate_tasks
    from vivi.train.loop import pretrain

    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, os.cpu_count() or 1)
    n_videos = videos or DEMO_VIDEOS
    total = 5
    begin = time.perf_counter()

    t = _stage(1, total, f"vivi synth: rendering {n_videos} videos of the built-in world")
    world = out / "world"
    gt = world / "ground_truth.jsonl"
    if not (gt.is_file() and sum(1 for _ in gt.open()) == n_videos):
        render_corpus(world, videos=n_videos, seed=0, workers=workers)
    _done(t)

    t = _stage(2, total, "vivi ingest: shot detection, 1 Hz frames, shards")
    data = out / "data"
    ingest(world / "videos", data, workers=workers, short_side=96)
    _done(t)

    t = _stage(3, total, "mini-VTAB: rendering the downstream suite (cached)")
    tasks = load_tasks("mini-vtab", out / "cache")
    _done(t)

    models: list[tuple[str, str, int]] = []  # (display name, encoder spec, seed)
    for seed in range(seeds):
        for name in DEMO_PRESETS:
            run = out / "runs" / f"{slug(name)}-s{seed}"
            t = _stage(4, total, f"vivi pretrain --preset {name} --seed {seed} -> {run}")
            if (run / "backbone.safetensors").is_file():
                print("      already trained, skipped")
            else:
                overrides = [f"seed={seed}"] + ([f"optim.steps={steps}"] if steps else [])
                pretrain(apply_overrides(preset(name, "tiny"), overrides), [data], run)
            _done(t)
            models.append((name, str(run), seed))
        models.append(("random", "random:tiny", seed))

    results = []
    for name, spec, seed in models:
        t = _stage(5, total, f"vivi evaluate {name} (seed {seed}) --task mini-vtab --protocol linear")
        enc = load_encoder(spec, seed=seed)
        res = evaluate_tasks(
            enc.model, tasks, protocol="linear", image_size=enc.image_size,
            out_json=out / "results" / f"{slug(name)}-s{seed}.json", model_name=name,
        )
        results.append(res if seeds == 1 else {**res, "model": f"{name} s{seed}"})
        _done(t)

    print("\n" + results_table(results))
    md, png = write_report(results, out / "report")
    if seeds > 1:
        summary = seed_summary(results, [m[0] for m in models])
        (out / "report" / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
        print("\nmini-VTAB mean over seeds (mean, min-max spread):")
        for name, s in summary.items():
            print(f"  {name:<12} {s['mean']:.1f}  [{s['min']:.1f}, {s['max']:.1f}]  seeds: {s['values']}")
    print(f"\nwrote {md} and {png}; total {time.perf_counter() - begin:.0f}s")
    return results


def seed_summary(results: list[dict], names: list[str]) -> dict[str, dict]:
    """Per model: the suite mean of each seed, their average, min and max."""
    by_name: dict[str, list[float]] = {}
    for name, res in zip(names, results):
        by_name.setdefault(name, []).append(round(res["mean"], 2))
    return {
        n: {"values": v, "mean": statistics.fmean(v), "min": min(v), "max": max(v)} for n, v in by_name.items()
    }
