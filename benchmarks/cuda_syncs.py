"""Which ops of a full VIVI step make the CPU wait for the GPU (CUDA only).

A GPU step is fast only while the CPU queues kernels ahead of the GPU; an op that needs a value
back (``.item()``, ``nonzero``, a blocking copy of a new ``torch.tensor(..., device=cuda)``,
``torch.linalg.inv``'s error check, some ``index_put``) drains the queue and leaves the GPU idle
while the CPU launches what follows. On one H200 at paper scale, taking such ops out of the
augmentation and the triplet loss took the 256-frame VIVI-Ex(4) step from 80 to 61 ms
(benchmarks/results/step-overhead/h200).
This runs the fixed-batch step of benchmarks/step_overhead.py under
``torch.cuda.set_sync_debug_mode("warn")`` and prints each synchronizing op with its place in vivi.

    python benchmarks/cuda_syncs.py --data DIR [--preset VIVI-Ex(4)] [--scale paper] [--set data.videos=8]
"""

from __future__ import annotations

import argparse
import collections
import traceback
import warnings

import torch

from step_overhead import add_run_arguments, full_step, one_batch
from vivi.config import apply_overrides, preset
from vivi.train.loop import augment_in_loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, scale="paper")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    cfg = apply_overrides(preset(a.preset, a.scale), a.set)
    device = torch.device("cuda")
    batch = one_batch(cfg, a.data, pin=True)
    step = full_step(cfg, iter(lambda: batch, None), augment_in_loader(cfg), device)
    for _ in range(3):  # first steps: lazy inits and the objective's cached pairs sync once, by design
        step()
    torch.cuda.synchronize()

    seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        frames = [f for f in traceback.extract_stack() if "/vivi/" in f.filename or "step_overhead" in f.filename]
        seen[(str(message)[:60], " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno} {f.line}" for f in frames[::-1][:3]))] += 1

    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    for _ in range(a.steps):
        step()
    torch.cuda.set_sync_debug_mode(0)
    syncs = {key: n for key, n in seen.items() if key[1]}  # the mode's own notice has no place in vivi
    print(f"{cfg.preset} {a.scale}: synchronizing ops in {a.steps} full steps: {sum(syncs.values())}")
    for (message, where), n in sorted(syncs.items(), key=lambda kv: -kv[1]):
        print(f"  {n} x {message} | {where}")


if __name__ == "__main__":
    main()
