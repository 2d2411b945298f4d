"""What a training step costs beyond the backbone, and whether the loader keeps up.

Measured side by side in one run, on the same batch shape (V x K x F frames at the preset's
image size):

  bare   the backbone alone: forward, a trivial loss, backward, SGD step, on a fixed batch
  full   a whole VIVI step as ``vivi pretrain`` runs it: next batch from the loader (default
         workers), augmentation, backbone + heads + pooling + predictor, losses, backward, SGD
  fixed  the full step on one fixed batch (no loader): what the step costs beyond the backbone
         when nothing else wants the CPU
  loader the loader alone: frames per second delivered with the default number of workers

  loop   the real ``vivi pretrain`` loop (``--loop-steps N``): the seconds per step it logs itself
         over the second half of an N-step run (logging, checkpoints and all), against the bare
         step measured just before and after it

and printed as ratios: full / bare (target <= 1.15), fixed / bare (the same without the loader's
CPU share), loop / bare, and loader / full consumption (target >= 2).

``--cpu-time`` counts work instead of wall time: one torch thread, the loader in the training
process (``data.workers=0``) and the process's CPU time per step. On a shared VM whose wall times
drift by more than the overhead being measured, this is the number that repeats; it is also what
the step costs when every core is busy (a fully loaded node, or a laptop running other jobs).

``--phases`` also prints where the bare and fixed-batch steps spend their time (loader, augmentation,
forward, objective, backward, SGD), the medians over all blocks.

``--malloc default`` measures both steps with glibc's own malloc instead of the buffer reuse
``vivi pretrain`` switches on for a CPU (vivi/train/host_memory.py).

    python benchmarks/step_overhead.py --data DIR [--preset VIVI-Ex(4)] [--steps 15] [--rounds 3] [--loop-steps 200] [--cpu-time] [--malloc default] [--phases]

DIR is an ingested folder (``vivi synth W && vivi ingest W DIR``); without ``--data`` a small
world is rendered and ingested into a temporary folder first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vivi.config import apply_overrides, preset
from vivi.data.augment import StepAugment, augment
from vivi.data.batches import make_loader, training_videos
from vivi.data.shards import read_index
from vivi.models.backbone import build_backbone
from vivi.models.vivi import VIVIModel, param_groups
from vivi.train.host_memory import reuse_freed_memory
from vivi.train.loop import augment_in_loader, autocast_context
from vivi.train.objective import VIVIObjective
from vivi.train.optimizer import sgd


CLOCK = time.perf_counter  # time.process_time under --cpu-time


class Phases:
    """Clock readings between the phases of a step (``--phases``): ``start()`` at the top of the step,
    then ``mark(name)`` after each phase. Ops on a CPU are synchronous, so the readings are the phases'."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._last = 0.0

    def start(self) -> None:
        self._last = CLOCK()

    def mark(self, name: str) -> None:
        now = CLOCK()
        self.times.setdefault(name, []).append(now - self._last)
        self._last = now

    def medians_ms(self) -> dict[str, float]:
        return {name: statistics.median(t) * 1000 for name, t in self.times.items()}


class _NoPhases(Phases):
    def start(self) -> None:
        pass

    def mark(self, name: str) -> None:
        pass


def _timed(step, n: int, warmup: int = 3, phases: Phases | None = None) -> list[float]:
    for _ in range(warmup):
        step()
    if phases is not None:  # the warm-up steps' phases are not counted
        for times in phases.times.values():
            del times[len(times) - warmup:]
    times = []
    for _ in range(n):
        t = CLOCK()
        step()
        times.append(CLOCK() - t)
    return times


def frames_per_step(cfg) -> int:
    return cfg.data.videos * cfg.data.shots * cfg.data.frames


def _layout(cfg, x):
    """The memory layout ``vivi pretrain`` gives the model and its input (``channels_last``)."""
    return x.to(memory_format=torch.channels_last) if cfg.channels_last else x


def bare_step(cfg, frames: torch.Tensor, phases: Phases | None = None):
    """The backbone in the same layout and precision as the full step: the baseline is its best self."""
    tick = phases or _NoPhases()
    net = _layout(cfg, build_backbone(cfg.model.backbone))
    opt = sgd(net.parameters(), lr=0.01, momentum=0.9)
    frames = _layout(cfg, frames)

    def step() -> None:
        tick.start()
        with autocast_context(cfg, frames.device):
            loss = net(frames).float().square().mean()
        tick.mark("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tick.mark("backward")
        opt.step()
        tick.mark("SGD")

    return step


def full_step(cfg, batches, in_loader: bool, phases: Phases | None = None):
    """``batches``: uint8 clips, or (``in_loader``) frames the loader already augmented."""
    tick = phases or _NoPhases()
    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    model = _layout(cfg, VIVIModel(cfg))
    opt = sgd(param_groups(model, cfg.optim.weight_decay), lr=0.01, momentum=0.9)
    objective = VIVIObjective(cfg.loss)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        tick.start()
        clips = next(batches)
        tick.mark("loader")
        frames = _layout(cfg, clips if in_loader else augment(clips.flatten(0, 2), cfg.augment, gen))
        tick.mark("augmentation")
        with autocast_context(cfg, frames.device):
            output = model(frames.view(v, k, f, *frames.shape[1:]), generator=gen)
        tick.mark("forward")
        terms = objective(output, v, k, f)
        tick.mark("objective")
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        tick.mark("backward")
        opt.step()
        tick.mark("SGD")

    return step


def loop_step_seconds(cfg, data: Path, steps: int, out: Path) -> list[float]:
    """Seconds per step of ``vivi pretrain`` itself, from the rate its metrics rows log (second half)."""
    import json

    from vivi.train.loop import pretrain

    run_cfg = apply_overrides(cfg, [f"optim.steps={steps}"])
    pretrain(run_cfg, [data], out, progress=False)
    frames = frames_per_step(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [frames / r["frames_per_s"] for r in rows if r["step"] > steps // 2]


def _make_data(tmp: Path) -> Path:
    world, data = tmp / "world", tmp / "data"
    for cmd in (["synth", str(world), "--videos", "24"], ["ingest", str(world), str(data)]):
        subprocess.run([sys.executable, "-m", "vivi", *cmd], check=True, stdout=subprocess.DEVNULL)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--preset", default="VIVI-Ex(4)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks of bare and full steps, alternated")
    ap.add_argument("--set", action="append", default=[], help="config overrides, as for vivi pretrain")
    ap.add_argument("--loop-steps", type=int, default=0,
                    help="also run the real training loop for N steps and time its second half (0: skip)")
    ap.add_argument("--warm-passes", type=float, default=0.0,
                    help="passes over the videos drawn from the loader before timing (fills its frame cache, "
                         "as later in a run; 0: the start of a run)")
    ap.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                    help="reuse: glibc keeps freed buffers, as vivi pretrain sets it on a CPU (both steps measured "
                         "so); default: glibc's own (each buffer over 32 MB mapped and page-faulted anew)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="CPU time of one torch thread with the loader in-process, instead of wall time")
    ap.add_argument("--phases", action="store_true",
                    help="also print the bare and fixed-batch steps' time per phase (medians over all blocks)")
    a = ap.parse_args()
    cfg = apply_overrides(preset(a.preset), a.set)
    if a.malloc == "default":
        os.environ["VIVI_MALLOC"] = "default"  # the --loop-steps run's vivi pretrain leaves glibc's malloc alone too
    malloc = "reuse" if reuse_freed_memory() else "default"
    if a.cpu_time:
        global CLOCK
        CLOCK = time.process_time
        torch.set_num_threads(1)
        cfg = apply_overrides(cfg, ["data.workers=0"])
        if a.loop_steps:
            ap.error("--loop-steps times the real loop by its logged wall-clock rate: not with --cpu-time")
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or _make_data(Path(tmp))
        table = training_videos(read_index([data]), cfg.data, str(data))
        v, k, f, s = cfg.data.videos, cfg.data.shots, cfg.data.frames, cfg.augment.image_size
        per_step = frames_per_step(cfg)
        print(f"{a.preset} tiny: {v}x{k}x{f} = {per_step} frames of {s}px per step; "
              f"torch threads {torch.get_num_threads()}, loader workers {cfg.data.workers}, cores {os.cpu_count()}, "
              f"channels_last {cfg.channels_last}, amp {cfg.amp}, malloc {malloc}; clock: {'CPU time' if a.cpu_time else 'wall'}")

        in_loader = augment_in_loader(cfg)
        print(f"augmentation in the {'loader' if in_loader else 'training process'} (augment.where={cfg.augment.where})")

        def loader(seed: int):
            wrap = (lambda items: StepAugment(items, cfg.augment, seed, cfg.channels_last)) if in_loader else None
            return make_loader(table, cfg.data, seed=seed, wrap=wrap)

        torch.manual_seed(0)
        bare_phases, fixed_phases = Phases(), Phases()
        bare_fn = bare_step(cfg, torch.randn(per_step, 3, s, s), bare_phases)
        batches = loader(0)
        warm = round(a.warm_passes * len(table) / v)
        for _ in range(warm):
            next(batches)
        if warm:
            print(f"loader warmed by {warm} batches ({a.warm_passes:g} passes over {len(table)} videos)")
        full_fn = full_step(cfg, batches, in_loader)
        fixed_batch = next(loader(2))
        fixed_fn = full_step(cfg, iter(lambda: fixed_batch, None), in_loader, fixed_phases)
        bares, fulls, fixeds = [], [], []
        for _ in range(a.rounds):  # alternate blocks: slow drifts of a shared machine hit all alike
            bares.append(statistics.median(_timed(bare_fn, a.steps, phases=bare_phases)))
            fulls.append(statistics.median(_timed(full_fn, a.steps)))
            fixeds.append(statistics.median(_timed(fixed_fn, a.steps, phases=fixed_phases)))
        ratios = [f / b for f, b in zip(fulls, bares)]
        fixed_ratios = [f / b for f, b in zip(fixeds, bares)]
        bare, full = statistics.median(bares), statistics.median(fulls)
        alone = loader(1)
        loader_fps = per_step / statistics.median(_timed(lambda: next(alone), a.steps))
        consumed_fps = per_step / full

        print("per block, ms (bare / full / fixed): "
              + "; ".join(f"{b * 1000:.0f} / {f * 1000:.0f} / {x * 1000:.0f}" for b, f, x in zip(bares, fulls, fixeds)))
        print(f"bare backbone step  {bare * 1000:8.1f} ms   (median of {a.rounds} blocks of {a.steps} steps)")
        print(f"full VIVI step      {full * 1000:8.1f} ms   ratio full/bare = {statistics.median(ratios):.3f}  "
              f"(target <= 1.15; per block: {', '.join(f'{r:.2f}' for r in ratios)})")
        print(f"full, fixed batch   {statistics.median(fixeds) * 1000:8.1f} ms   ratio fixed/bare = "
              f"{statistics.median(fixed_ratios):.3f}  (no loader; per block: {', '.join(f'{r:.2f}' for r in fixed_ratios)})")
        print(f"loader alone        {loader_fps:8.0f} frames/s; the step consumes {consumed_fps:.0f} frames/s   "
              f"ratio = {loader_fps / consumed_fps:.2f}  (target >= 2)")
        if a.phases:
            bare_ms, fixed_ms = bare_phases.medians_ms(), fixed_phases.medians_ms()
            print(f"per phase, ms (medians of {a.rounds * a.steps} steps)   bare   fixed batch")
            for name in fixed_ms:
                print(f"  {name:<14} {bare_ms[name] if name in bare_ms else float('nan'):8.1f} {fixed_ms[name]:8.1f}")
            print(f"  {'sum':<14} {sum(bare_ms.values()):8.1f} {sum(fixed_ms.values()):8.1f}")
        if a.loop_steps:
            before = statistics.median(_timed(bare_fn, a.steps))
            loop = statistics.median(loop_step_seconds(cfg, data, a.loop_steps, Path(tmp) / "run"))
            after = statistics.median(_timed(bare_fn, a.steps))
            print(f"vivi pretrain loop  {loop * 1000:8.1f} ms   ratio loop/bare = {loop / ((before + after) / 2):.3f}  "
                  f"(steps {a.loop_steps // 2 + 1}-{a.loop_steps} of a {a.loop_steps}-step run; "
                  f"bare before/after {before * 1000:.0f}/{after * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
