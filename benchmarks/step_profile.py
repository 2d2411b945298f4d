"""Where a full VIVI step spends its time, kernel by kernel: torch.profiler over the fixed-batch step of
benchmarks/step_overhead.py (the same step ``vivi pretrain`` runs, loader left out), and over the bare
backbone step for comparison. Prints the ops with the most device time (CUDA) or CPU time (CPU).

    python benchmarks/step_profile.py --data DIR [--preset VIVI-Ex(4)] [--scale tiny|paper] [--set ...] [--steps 5] [--rows 30]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from step_overhead import add_run_arguments, bare_step, frames_per_step, full_step, one_batch
from vivi.config import apply_overrides, preset
from vivi.train.distributed import DistContext, process_device
from vivi.train.loop import augment_in_loader


def _profile(step, steps: int, cuda: bool) -> profile:
    for _ in range(3):  # warm-up: allocator, cuDNN's choices, lazy inits
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, scale="paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=30)
    a = ap.parse_args()
    cfg = apply_overrides(preset(a.preset, a.scale), a.set)
    device = process_device(DistContext(), cfg.device)
    cuda = device.type == "cuda"
    if augment_in_loader(cfg):
        ap.error("profiles the step with augmentation on the device (augment.where=device)")
    batch = one_batch(cfg, a.data, pin=cuda)
    s = cfg.augment.image_size
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    steps = {
        "bare backbone": bare_step(cfg, torch.randn(frames_per_step(cfg), 3, s, s, device=device)),
        "full VIVI step, fixed batch": full_step(cfg, iter(lambda: batch, None), False, device),
    }
    for name, step in steps.items():
        prof = _profile(step, a.steps, cuda)
        print(f"== {name}: {a.steps} steps of {frames_per_step(cfg)} frames, {cfg.preset} {a.scale}, sorted by {sort}")
        print(prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
