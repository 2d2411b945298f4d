"""What a training step costs beyond the backbone, and whether the loader keeps up.

Measured side by side in one run, on the same batch shape (V x K x F frames at the preset's
image size):

  bare   the backbone alone: forward, a trivial loss, backward, SGD step, on a fixed batch
  full   a whole VIVI step as ``vivi pretrain`` runs it: next batch from the loader (default
         workers), augmentation, backbone + heads + pooling + predictor, losses, backward, SGD
  fixed  the full step on one fixed batch (no loader): what the step costs beyond the backbone
         when nothing else wants the CPU
  loader the loader alone: frames per second delivered with the default number of workers, over
         a run of batches (with N workers most draws find a batch waiting: a median draw would time
         the queue)

  loop   the real ``vivi pretrain`` loop (``--loop-steps N``): the seconds per step it logs itself
         over the second half of an N-step run (logging, checkpoints and all), against the bare
         step measured just before and after it

and printed as ratios: full / bare (target <= 1.15), fixed / bare (the same without the loader's
CPU share), loop / bare, and loader / full consumption (target >= 2). A full block draws from a
queue its workers refilled during the blocks before it (4 batches a worker), so it shows what the
loader's CPU share costs the step; whether the loader keeps up is the loader ratio, and the real
loop shows both together.

``--cpu-time`` counts work instead of wall time: one torch thread, the loader in the training
process (``data.workers=0``) and the process's CPU time per step. On a shared VM whose wall times
drift by more than the overhead being measured, this is the number that repeats; it is also what
the step costs when every core is busy (a fully loaded node, or a laptop running other jobs).

``--phases`` also prints where the bare and fixed-batch steps spend their time (loader, augmentation,
forward, objective, backward, SGD), the medians over all blocks.

``--set device=cuda`` (or a machine with CUDA, device ``auto``) measures on the GPU: the clock is read
after ``torch.cuda.synchronize()``, the batches are copied to the device as ``vivi pretrain`` copies
them, and images/s and peak GPU memory are printed beside the ratios. The GPU row of the issue is
ResNet-50 v2 at 224 px in bf16 and channels_last: ``--scale paper --set data.videos=8`` (a per-GPU
share of the paper's 2048-shot batch; 256 frames per step for VIVI-Ex(4)).

``--malloc default`` measures both steps with glibc's own malloc instead of the buffer reuse
``vivi pretrain`` switches on for a CPU (vivi/train/host_memory.py).

    python benchmarks/step_overhead.py --data DIR [--preset VIVI-Ex(4)] [--scale tiny|paper] [--steps 15] [--rounds 3] [--loop-steps 200] [--cpu-time] [--malloc default] [--phases]

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
from vivi.data.batches import loader_workers, make_loader, training_videos
from vivi.data.shards import read_index
from vivi.models import build_model
from vivi.models.backbone import build_backbone
from vivi.models.vito import VITOModel
from vivi.models.vivi import param_groups
from vivi.train.host_memory import reuse_freed_memory
from vivi.train.distributed import DistContext, process_device
from vivi.train.loop import amp_mode, augment_in_loader, autocast_context, loss_scaler
from vivi.train.objective import VIVIObjective
from vivi.train.optimizer import sgd
from vivi.train.prefetch import DevicePrefetcher


CLOCK = time.perf_counter  # time.process_time under --cpu-time; synchronized on CUDA (main)


def _cuda_clock() -> float:
    """Wall time once the GPU has finished what was queued: a CUDA step's time, not its launch time."""
    torch.cuda.synchronize()
    return time.perf_counter()


class Phases:
    """Clock readings between the phases of a step (``--phases``): ``start()`` at the top of the step,
    then ``mark(name)`` after each phase. Ops on a CPU are synchronous, so the readings are the phases';
    on CUDA each reading synchronizes, which costs the overlap of one phase's launches with the last's
    kernels (a few per cent): the per-phase run is a breakdown, the run without ``--phases`` the timing."""

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


def _compiled(cfg, net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` when the run would compile (``--set compile=true``), for both steps alike."""
    return torch.compile(net) if cfg.compile else net


def bare_step(cfg, frames: torch.Tensor, phases: Phases | None = None):
    """The backbone in the same layout and precision as the full step: the baseline is its best self."""
    tick = phases or _NoPhases()
    net = _layout(cfg, build_backbone(cfg.model.backbone).to(frames.device))
    opt = sgd(net.parameters(), lr=0.01, momentum=0.9)
    net = _compiled(cfg, net)
    frames = _layout(cfg, frames)
    scaler = loss_scaler(cfg, frames.device)

    def step() -> None:
        tick.start()
        with autocast_context(cfg, frames.device):
            loss = net(frames).float().square().mean()
        tick.mark("forward")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        tick.mark("backward")
        scaler.step(opt)
        scaler.update()
        tick.mark("SGD")

    return step


def full_step(cfg, batches, in_loader: bool, device: torch.device, phases: Phases | None = None):
    """``batches``: uint8 clips, or (``in_loader``) frames the loader already augmented; copied to
    ``device`` one step ahead, during the backward, as ``vivi pretrain`` does (DevicePrefetcher).
    The preset's own network (``build_model``): VITO's step also runs its EMA target forward and
    updates it after SGD (phase ``EMA``), at a fixed momentum: its cost does not depend on the value."""
    tick = phases or _NoPhases()
    v, k, f = cfg.data.videos, cfg.data.shots, cfg.data.frames
    model = _layout(cfg, build_model(cfg).to(device))
    vito = isinstance(model, VITOModel)
    opt = sgd(param_groups(model, cfg.optim.weight_decay), lr=0.01, momentum=0.9)
    net = _compiled(cfg, model)
    objective = VIVIObjective(cfg.loss)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = DevicePrefetcher(batches, device)
    scaler = loss_scaler(cfg, device)

    def step() -> None:
        tick.start()
        clips = next(batches)
        tick.mark("loader")
        frames = _layout(cfg, clips if in_loader else augment(clips.flatten(0, 2), cfg.augment, gen))
        tick.mark("augmentation")
        with autocast_context(cfg, frames.device):
            output = net(frames.view(v, k, f, *frames.shape[1:]), generator=gen)
        tick.mark("forward")
        terms = objective(output, v, k, f)
        tick.mark("objective")
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        batches.prefetch()
        tick.mark("backward")
        scaler.step(opt)
        scaler.update()
        tick.mark("SGD")
        if vito:
            model.update_target(cfg.optim.ema_momentum)
            tick.mark("EMA")

    return step


def add_run_arguments(ap: argparse.ArgumentParser, scale: str = "tiny") -> None:
    """What names the step measured: the data, the preset, its scale and config overrides."""
    ap.add_argument("--data", type=Path, required=scale != "tiny")
    ap.add_argument("--preset", default="VIVI-Ex(4)")
    ap.add_argument("--scale", default=scale, help="tiny (the target's scale) or paper (ResNet-50 v2, 224 px)")
    ap.add_argument("--set", action="append", default=[], help="config overrides, as for vivi pretrain")


def one_batch(cfg, data: Path, pin: bool) -> torch.Tensor:
    """One loader batch of ``data`` (pinned for a CUDA device), for the fixed-batch step."""
    table = training_videos(read_index([data]), cfg.data, str(data))
    return next(make_loader(table, cfg.data, seed=2, pin=pin))


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
    add_run_arguments(ap)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks of bare and full steps, alternated")
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
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="CUDA: let cuDNN time its convolution algorithms for the batch shape (both steps)")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    cfg = apply_overrides(preset(a.preset, a.scale), a.set)
    device = process_device(DistContext(), cfg.device)
    global CLOCK
    if a.malloc == "default":
        os.environ["VIVI_MALLOC"] = "default"  # the --loop-steps run's vivi pretrain leaves glibc's malloc alone too
    malloc = "reuse" if reuse_freed_memory() else "default"
    if device.type == "cuda":
        CLOCK = _cuda_clock
        if a.cpu_time:
            ap.error("--cpu-time counts the CPU's work: not with a CUDA device (--set device=cpu)")
    if a.cpu_time:
        CLOCK = time.process_time
        torch.set_num_threads(1)
        cfg = apply_overrides(cfg, ["data.workers=0"])
        if a.loop_steps:
            ap.error("--loop-steps times the real loop by its logged wall-clock rate: not with --cpu-time")
    setting = cfg.data.workers
    cfg = apply_overrides(cfg, [f"data.workers={loader_workers(setting, device)}"])  # as vivi pretrain resolves it
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or _make_data(Path(tmp))
        table = training_videos(read_index([data]), cfg.data, str(data))
        v, k, f, s = cfg.data.videos, cfg.data.shots, cfg.data.frames, cfg.augment.image_size
        per_step = frames_per_step(cfg)
        amp = amp_mode(cfg, device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {torch.get_num_threads()}"
        print(f"{a.preset} {a.scale}: {v}x{k}x{f} = {per_step} frames of {s}px per step; {where}, torch {torch.__version__}, "
              f"loader workers {cfg.data.workers} (data.workers={setting}), cores {os.cpu_count()}, channels_last {cfg.channels_last}, amp {amp}, "
              f"compile {cfg.compile}, cudnn.benchmark {a.cudnn_benchmark}, malloc {malloc}; clock: {'CPU time' if a.cpu_time else 'wall'}")

        in_loader = augment_in_loader(cfg)
        print(f"augmentation in the {'loader' if in_loader else 'training process'} (augment.where={cfg.augment.where})")

        def loader(seed: int):
            wrap = (lambda items: StepAugment(items, cfg.augment, seed, cfg.channels_last)) if in_loader else None
            return make_loader(table, cfg.data, seed=seed, wrap=wrap, pin=device.type == "cuda")

        torch.manual_seed(0)
        bare_phases, fixed_phases = (Phases(), Phases()) if a.phases else (None, None)
        bare_fn = bare_step(cfg, torch.randn(per_step, 3, s, s, device=device), bare_phases)
        batches = loader(0)
        warm = round(a.warm_passes * len(table) / v)
        for _ in range(warm):
            next(batches)
        if warm:
            print(f"loader warmed by {warm} batches ({a.warm_passes:g} passes over {len(table)} videos)")
        full_fn = full_step(cfg, batches, in_loader, device)
        fixed_batch = next(loader(2))
        fixed_fn = full_step(cfg, iter(lambda: fixed_batch, None), in_loader, device, fixed_phases)
        bares, fulls, fixeds = [], [], []
        peaks = dict.fromkeys(("bare", "full", "fixed"), 0)

        def block(name: str, fn, phases: Phases | None = None) -> float:
            """The median step of one block; on CUDA also the block's peak GPU memory."""
            median = statistics.median(_timed(fn, a.steps, phases=phases))
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
                torch.cuda.reset_peak_memory_stats(device)
            return median

        for _ in range(a.rounds):  # alternate blocks: slow drifts of a shared machine hit all alike
            bares.append(block("bare", bare_fn, bare_phases))
            fulls.append(block("full", full_fn))
            fixeds.append(block("fixed", fixed_fn, fixed_phases))
        ratios = [f / b for f, b in zip(fulls, bares)]
        fixed_ratios = [f / b for f, b in zip(fixeds, bares)]
        bare, full = statistics.median(bares), statistics.median(fulls)
        alone = loader(1)
        queued = 4 * cfg.data.workers  # what the workers hold ready (prefetch_factor 4): drawn first, untimed
        # the rate over a run of batches, not the median batch: N workers finish their batches nearly
        # together, so most draws find one waiting, and the median (1 M frames/s with 8 workers on one
        # H200 in session 15) timed the queue, not the workers
        drawn = max(a.steps, 3 * cfg.data.workers)
        loader_fps = per_step * drawn / sum(_timed(lambda: next(alone), drawn, warmup=3 + queued))
        del alone  # its workers would go on filling their queue beside the steps timed below
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
        if device.type == "cuda":
            print(f"images/s            bare {per_step / bare:8.0f}   full {consumed_fps:8.0f}   "
                  f"fixed batch {per_step / statistics.median(fixeds):8.0f}")
            print("peak GPU memory     " + "   ".join(f"{name} {peak / 2**30:.1f} GiB" for name, peak in peaks.items())
                  + "   (all three models resident)")
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
