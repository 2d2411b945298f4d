"""``vivi study``: the paper's ablation at laptop scale, with seeds, honestly reported.

world -> ingest -> a labelled image folder (the ImageNet stand-in) -> pretrain every model x
seed -> evaluate each (linear, and the VTAB-1k fine-tune sweep) -> the robustness (pm-k) of the
co-trained model against a purely supervised one -> ``report.md``: the Table 4 layout with
medians and spreads over seeds, and the paper's claims checked one by one.

Every stage is resumable (runs, result files and the world are skipped when complete), so the
default size can run in the background and be restarted.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vivi.config import apply_overrides, preset
from vivi.demo import slug
from vivi.errors import UserError
from vivi.provenance import provenance

STUDY_MODELS = (
    "Ex-YT-F", "Ex-YT-S", "VIVI-Ex(2)", "VIVI-Ex(4)", "VIVI-Ex(2)-Ord", "Rot-YT-F", "VIVI-Rot(4)",
    "VIVI-Ex(4)-Co(10%)", "VITO", "VIVI-Ex(4)+Attn",
)
SUPERVISED = "Sup-ImageNet"  # the robustness reference: the labelled images alone
CO_TRAINED = "VIVI-Ex(4)-Co(10%)"  # the model whose robustness the paper compares with it
VARIANT_SEP = "@"  # "VIVI-Ex(4)@loss.video_weight=0.3": a preset with settings changed, a row of its own


# The paper's orderings (Figure 2, Table 4): (lower, higher) on the suite mean.
CLAIMS = (("Ex-YT-F", "Ex-YT-S"), ("Ex-YT-S", "VIVI-Ex(4)"), ("Rot-YT-F", "VIVI-Rot(4)"))


def model_config(name: str, overrides: Sequence[str] = ()):
    """The tiny-scale config of a study model: a preset name, optionally followed by ``@key=value``
    settings (a variant, e.g. for a sweep of one weight); the variant's settings apply last."""
    base, *changes = name.split(VARIANT_SEP)
    where = f"--models {name}"
    for change in changes:
        if "=" not in change:
            raise UserError(f"{where}: expected PRESET@section.field=value, e.g. VIVI-Ex(4)@loss.video_weight=0.3")
        if change.partition("=")[0].strip() == "seed":  # it overrode the study's seed: every "seed" trained alike
            raise UserError(f"{where}: a variant cannot set seed; the study's seeds are chosen with --seeds")
    try:
        return apply_overrides(preset(base.strip(), "tiny"), [*overrides, *changes])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


@dataclass(frozen=True)
class StudySize:
    videos: int  # videos in the built-in world
    steps: int  # pretraining steps per run
    seeds: int
    protocols: tuple[str, ...]
    tasks: str  # the task spec evaluated
    labelled_per_class: int  # images per class of the labelled folder (Co(10%) uses a tenth)
    robustness: str  # robustness task spec ("" to skip)
    models: tuple[str, ...] = field(default=STUDY_MODELS)


# The default fits the 3-hour budget on 2 CPU cores (measured on a 2-core Xeon VM, channels-last):
# 33 runs of 1200 steps (~0.07-0.25 s per step by model) plus a ~70 s linear probe each. At 400
# steps (the first default) the losses were still falling and Ex-YT-S did not beat Ex-YT-F (seed
# 0 at 1200: 43.8 vs 42.0), so the budget goes to steps. vtab1k costs ~4-5 min per run at tiny
# scale since channels-last (benchmarks/results/study-vtab1k; 15 min before), i.e. ~2-2.5 h more
# for 30 runs: --protocols linear,vtab1k.
SIZES = {
    "default": StudySize(160, 1200, 3, ("linear",), "mini-vtab", 100, "world"),
    "quick": StudySize(40, 20, 1, ("linear",), "mini-vtab:object,scene,count", 20, "world"),
}


def _say(text: str) -> float:
    print(text, flush=True)
    return time.perf_counter()


def prepare_data(out: Path, size: StudySize) -> tuple[Path, Path]:
    """The world's videos ingested, and the labelled image folder; each made once."""
    from vivi.data.ingest import ingest
    from vivi.data.synth import render_corpus
    from vivi.data.synth.tasks import render_labelled

    world, data = out / "world", out / "data"
    gt = world / "ground_truth.jsonl"
    if not (gt.is_file() and sum(1 for _ in gt.open()) == size.videos):
        render_corpus(world, videos=size.videos, seed=0, workers=max(1, os.cpu_count() or 1))
    ingest(world / "videos", data, workers=max(1, os.cpu_count() or 1), short_side=96)
    labelled = render_labelled(out / "labelled", per_class=size.labelled_per_class)
    return data, labelled


def train(name: str, seed: int, size: StudySize, data: Path, labelled: Path, runs: Path) -> Path:
    """Pretrain one model with one seed (skipped when its backbone exists)."""
    from vivi.train.loop import pretrain

    run = runs / f"{slug(name)}-s{seed}"
    if (run / "backbone.safetensors").is_file():
        return run
    overrides = [f"seed={seed}", f"optim.steps={size.steps}"]
    cfg = model_config(name, overrides)
    if cfg.data.labelled_batch > 0:
        cfg = apply_overrides(cfg, [f"data.labelled=imagefolder:{labelled}"])
    sources = [labelled] if cfg.data.mode == "images" else [data]
    pretrain(cfg, sources, run)
    return run


def result_path(out: Path, protocol: str, name: str, seed: int) -> Path:
    """Where a run's results of one protocol (``protocol="robustness"``: its pm-k) are kept."""
    folder = out / "robustness" if protocol == "robustness" else out / "results" / protocol
    return folder / f"{slug(name)}-s{seed}.json"


def saved_results(out: Path, name: str, seed: int, protocols: Sequence[str], task_names: set[str]) -> dict | None:
    """Every result of a run, if an earlier invocation finished them all (protocol -> result), else
    None. A study folder rebuilt from committed result files (benchmarks/results/) resumes with
    them, without the runs' backbones."""
    found = {}
    for protocol in protocols:
        path = result_path(out, protocol, name, seed)
        if not path.is_file():
            return None
        found[protocol] = json.loads(path.read_text())
        if protocol != "robustness" and not task_names <= {e["task"] for e in found[protocol].get("tasks", [])}:
            return None  # stopped during its evaluation: the run's backbone finishes it
    return found


def evaluate_run(run: Path, name: str, seed: int, protocol: str, tasks: list, out: Path) -> dict:
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.suite import evaluate_tasks

    enc = load_encoder(str(run))
    return evaluate_tasks(
        enc.model, tasks, protocol=protocol, image_size=enc.image_size,
        out_json=result_path(out, protocol, name, seed), model_name=name, model_source=str(run),
    )


def robustness(run: Path, name: str, seed: int, spec: str, out: Path) -> dict:
    """pm-k of the run's own classification head (trained on the labelled object images) on the
    world's frames, as the paper evaluates its co-trained classifier on video frames."""
    from vivi.evaluate.classifier import head_classifier
    from vivi.evaluate.encoders import load_encoder
    from vivi.evaluate.robustness import evaluate_robustness

    path = result_path(out, "robustness", name, seed)
    if path.is_file():
        return json.loads(path.read_text())
    return evaluate_robustness(
        load_encoder(str(run)), spec, out_json=path, model_name=name, cache_dir=out / "cache", head=head_classifier(run)
    )


def run_study(out: Path, size: StudySize) -> Path:
    """Every stage in order; returns the report's path."""
    from vivi.data.tasks import load_tasks

    from vivi.evaluate.suite import ALL_PROTOCOLS

    for name in size.models:
        model_config(name, [f"optim.steps={size.steps}"])  # an unknown name or setting stops here, before any work
    if unknown := [p for p in size.protocols if p not in ALL_PROTOCOLS]:
        raise UserError(f"--protocols {','.join(unknown)}: unknown protocol (available: {', '.join(ALL_PROTOCOLS)})")
    if not size.protocols:  # "--protocols ," evaluated nothing and marked every run done
        raise UserError("--protocols: no protocol given (e.g. --protocols linear)")
    if size.seeds < 1:
        raise UserError(f"--seeds {size.seeds}: expected at least 1")
    check_same_study(out, size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(asdict(size), indent=2) + "\n")
    begin = _say(f"vivi study -> {out}: {len(size.models)} models x {size.seeds} seeds, {size.steps} steps, "
                 f"{'+'.join(size.protocols)} on {size.tasks}")
    data, labelled = prepare_data(out, size)
    tasks = load_tasks(size.tasks, out / "cache")
    results: dict[str, dict[str, list[dict]]] = {p: {} for p in size.protocols}
    rob: dict[str, list[dict]] = {}
    robust_models = robustness_pair(size)
    names = run_order(size.models, robust_models)
    total = len(names) * size.seeds
    report = write_study_report(out, size, results, rob, 0.0, runs_done=(0, total))
    task_names = {t.name for t in tasks}
    for i, name in enumerate(names):
        wanted = [*(size.protocols if name != SUPERVISED else ()), *(("robustness",) if name in robust_models else ())]
        for seed in range(size.seeds):
            t = _say(f"\n[{i * size.seeds + seed + 1}/{total}] {name} seed {seed}")
            found = saved_results(out, name, seed, wanted, task_names)
            if found is None:
                run = train(name, seed, size, data, labelled, out / "runs")
                found = {p: evaluate_run(run, name, seed, p, tasks, out) for p in wanted if p != "robustness"}
                if "robustness" in wanted:
                    found["robustness"] = robustness(run, name, seed, size.robustness, out)
            for protocol, res in found.items():
                (rob if protocol == "robustness" else results[protocol]).setdefault(name, []).append(res)
            seconds = time.perf_counter() - t
            print(f"      done in {seconds:.0f}s", flush=True)
            _log_time(out, name, seed, seconds)
        # A report after every model, so a study stopped early still shows complete rows.
        done = (i + 1) * size.seeds
        report = write_study_report(out, size, _in_table_order(results, size.models), rob,
                                    time.perf_counter() - begin, runs_done=(done, total))
    print(f"\nwrote {report}")
    return report


# What a study's runs and world are made with: resuming with another value would reuse runs and
# results made with the old one under the new one's name (a --steps 30 report of 20-step runs).
SAME_ON_RESUME = ("videos", "steps", "labelled_per_class")


def check_same_study(out: Path, size: StudySize) -> None:
    """Refuse to resume a study folder made with other ``SAME_ON_RESUME`` values, naming them;
    seeds, models and protocols may change (what exists is reused, the rest is added)."""
    saved = out / "study.json"
    if not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        return  # a torn write: nothing to compare with, the runs' own configs still are
    new = asdict(size)
    differ = [f"{k}={old[k]!r} there, {new[k]!r} now" for k in SAME_ON_RESUME if k in old and old[k] != new[k]]
    if differ:
        raise UserError(f"{out}: holds a study made with other settings ({'; '.join(differ)}; see {saved}); "
                        "resume it with the same --steps and size, or use another -o for a new study")


def robustness_pair(size: StudySize) -> tuple[str, ...]:
    """The co-trained model and the supervised reference, when the study includes co-training (a
    study of other models, e.g. a sweep, does not train the pair just for the comparison)."""
    return (CO_TRAINED, SUPERVISED) if size.robustness and CO_TRAINED in size.models else ()


def _log_time(out: Path, name: str, seed: int, seconds: float) -> None:
    """Wall time of each run that did work, kept across invocations: the study's real cost."""
    if seconds >= 5:  # less: everything was done already
        with (out / "timings.jsonl").open("a") as f:
            f.write(json.dumps({"model": name, "seed": seed, "seconds": round(seconds, 1)}) + "\n")


def _timed_runs(out: Path) -> tuple[int, float]:
    path = out / "timings.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    last = {(r["model"], r["seed"]): r["seconds"] for r in rows}  # a run resumed after a stop: its last part
    return len(last), sum(r["seconds"] for r in rows)


def run_order(models: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Models one after another (all seeds of one before the next), in the order of what the
    study has to show: the paper's claim pairs, then the co-training and robustness pair, then
    the VITO-style rows, then the rest. A study cut short has complete rows for what matters most."""
    names = [*models, *(m for m in extra if m not in models)]
    priority = [m for pair in CLAIMS for m in pair] + [CO_TRAINED, SUPERVISED, "VITO", "VIVI-Ex(4)+Attn"]
    first = [m for m in dict.fromkeys(priority) if m in names]
    return [*first, *(m for m in names if m not in first)]


def _in_table_order(results: dict, models: Sequence[str]) -> dict:
    return {p: {m: per[m] for m in models if m in per} for p, per in results.items()}


# ---- the report


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values)


def model_rows(per_model: dict[str, list[dict]]) -> list[dict]:
    """Per model: per-task and per-group medians over seeds, the median mean and its spread."""
    rows = []
    for name, runs in per_model.items():
        tasks = [e["task"] for e in runs[0]["tasks"]]
        groups = list(runs[0].get("groups", {}))
        task_acc = {t: statistics.median(next(e["accuracy"] for e in r["tasks"] if e["task"] == t) for r in runs) for t in tasks}
        group_acc = {g: statistics.median(r["groups"][g] for r in runs) for g in groups}
        means = [r["mean"] for r in runs]
        rows.append({"model": name, "tasks": task_acc, "groups": group_acc, "median": statistics.median(means),
                     "spread": _spread(means), "seeds": means})
    return rows


def variant_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(preset, variant) for each ``PRESET@key=value`` model whose preset is in the study too."""
    bases = ((n.split(VARIANT_SEP)[0], n) for n in names if VARIANT_SEP in n)
    return [(base, n) for base, n in bases if base in names]


def check_claims(rows: list[dict], pairs: Sequence[tuple[str, str]] = CLAIMS) -> list[dict]:
    """Each (lower, higher) claim: the median difference against the larger of the two seed spreads."""
    by = {r["model"]: r for r in rows}
    checks = []
    for low, high in pairs:
        if low not in by or high not in by:
            continue
        diff = by[high]["median"] - by[low]["median"]
        margin = max(by[low]["spread"], by[high]["spread"])
        # seed i of both models starts from the same initial weights: the per-seed differences show
        # whether the median's sign is consistent, which the spread alone does not
        paired = [h - lo for h, lo in zip(by[high]["seeds"], by[low]["seeds"])]
        checks.append({"claim": f"{high} > {low}", "difference": diff, "spread": margin, "holds": diff > margin,
                       "per_seed": paired})
    return checks


def _comparison_line(label: str, c: dict, verdict: str) -> str:
    seeds = ", ".join(f"{d:+.1f}" for d in c["per_seed"])
    return f"- {label}: {c['difference']:+.1f} points vs spread {c['spread']:.1f} -> **{verdict}** (seed by seed: {seeds})"


def _table(rows: list[dict]) -> list[str]:
    tasks = list(rows[0]["tasks"])
    groups = list(rows[0]["groups"])
    head = ["model", *tasks, *groups, "mean (median)", "seed spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], *(f"{r['tasks'][t]:.1f}" for t in tasks), *(f"{r['groups'][g]:.1f}" for g in groups),
                 f"**{r['median']:.1f}**", f"{r['spread']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_study_report(out: Path, size: StudySize, results: dict, rob: dict, seconds: float,
                       runs_done: tuple[int, int] | None = None) -> Path:
    partial = runs_done is not None and runs_done[0] < runs_done[1]
    lines = [
        "# vivi study" + (f" (PARTIAL: {runs_done[0]} of {runs_done[1]} runs done)" if partial else ""), "",
        f"{len(size.models)} models x {size.seeds} seeds on the built-in world ({size.videos} videos), "
        f"{size.steps} pretraining steps each at `--scale tiny`; evaluated on `{size.tasks}`. "
        f"Medians over seeds; the spread is max - min of the seeds' means.", "",
    ]
    timed, total = _timed_runs(out)
    if timed:
        lines += [f"Wall time: {total / 3600:.2f} h for the {timed} runs timed in `timings.jsonl` "
                  f"(pretraining + evaluation, across invocations; {seconds / 60:.0f} min in the last).", ""]
    if partial:
        lines += ["The study is still running or was stopped: rows below are the models finished so far; "
                  "run the same command again to go on.", ""]
    summary: dict = {"size": asdict(size), "seconds": round(seconds), "runs_done": list(runs_done or ()),
                     "provenance": provenance()}
    for protocol, per_model in results.items():
        if not per_model:
            continue
        rows = model_rows(per_model)
        checks = check_claims(rows)
        summary[protocol] = {"rows": rows, "claims": checks}
        lines += [f"## {protocol}", "", *_table(rows), ""]
        if checks:
            lines += ["The paper's orderings (a claim holds when the median difference exceeds the larger seed spread):", ""]
            lines += [_comparison_line(c["claim"], c, "holds" if c["holds"] else "does NOT hold") for c in checks]
            lines.append("")
        variants = check_claims(rows, variant_pairs([r["model"] for r in rows]))
        if variants:
            summary[protocol]["variants"] = variants
            lines += ["Variants against their preset (different when the median difference exceeds the larger seed spread):", ""]
            for c in variants:
                verdict = ("higher" if c["difference"] > 0 else "lower") if abs(c["difference"]) > c["spread"] else "within the spread"
                lines.append(_comparison_line(c["claim"].replace(" > ", " vs "), c, verdict))
            lines.append("")
        co = next((r for r in rows if r["model"] == CO_TRAINED), None)
        base = next((r for r in rows if r["model"] == "VIVI-Ex(4)"), None)
        if co and base:
            gains = {g: co["groups"][g] - base["groups"][g] for g in co["groups"]}
            best = max(gains, key=gains.get)
            lines += [f"Co-training gain over VIVI-Ex(4) per group: "
                      + ", ".join(f"{g} {v:+.1f}" for g, v in gains.items())
                      + f" (largest: {best}; the paper finds natural).", ""]
    if rob:
        lines += ["## Robustness (pm-k on the world's frames, k=4; each model's own classification head)", "",
                  "| model | anchor accuracy | pm-k accuracy | drop | seeds |", "|---|---|---|---|---|"]
        for name, res in rob.items():
            entries = [r["tasks"][0] for r in res]
            anchor = statistics.median(e["anchor_accuracy"] for e in entries)
            pmk = statistics.median(e["pmk_accuracy"] for e in entries)
            lines.append(f"| {name} | {anchor:.1f} | {pmk:.1f} | {anchor - pmk:.1f} | {len(entries)} |")
        summary["robustness"] = rob
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "study_summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return path


def study_size(name: str, seeds: int | None = None, steps: int | None = None, models: str | None = None,
               protocols: str | None = None) -> StudySize:
    size = SIZES[name]
    if seeds is not None:  # 0 is refused by run_study, not read as "the default"
        size = replace(size, seeds=seeds)
    if steps is not None:
        size = replace(size, steps=steps)
    if models:
        # commas inside [...] belong to a variant's list value: VIVI-Ex(4)@optim.decay_steps=[800,1000]
        size = replace(size, models=tuple(m.strip() for m in re.split(r",(?![^\[]*\])", models) if m.strip()))
    if protocols:
        size = replace(size, protocols=tuple(p.strip() for p in protocols.split(",") if p.strip()))
    return size
