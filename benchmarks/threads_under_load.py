"""How many torch threads a CPU training step should use when something else wants the cores.

torch starts one OpenMP thread per core, and OpenMP threads spin while they wait for each other.
When another process holds one of those cores (a loader worker, a second job, a browser), every
parallel op waits for the preempted thread, so the step can get far slower than with fewer
threads. This script measures it: the full VIVI step on one fixed batch (augmentation, backbone,
heads, losses, backward, SGD; no loader), in a fresh process per setting, with and without
``--load`` busy processes beside it, and prints each
setting's step time against the default (all cores, no load) measured in the same run.

Settings (each in its own process, since OpenMP reads its environment once at start):

  threads=all            torch's default: one thread per core
  threads=all, PASSIVE   the same with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep)
  threads=all-load       one thread per core left free
  threads=1

    python benchmarks/threads_under_load.py [--preset VIVI-Ex(4)] [--load 1] [--steps 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(preset_name: str, steps: int) -> None:
    """Time the fixed-batch full step in this process; print its per-step seconds as JSON."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from step_overhead import full_step

    from vivi.config import preset

    cfg = preset(preset_name)
    v, k, f, s = cfg.data.videos, cfg.data.shots, cfg.data.frames, cfg.data.load_size
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (v, k, f, 3, s, s), dtype=torch.uint8)
    step = full_step(cfg, iter(lambda: clips, None), in_loader=False)
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"threads": torch.get_num_threads(), "times": times}))


def run_setting(preset_name: str, steps: int, threads: int, passive: bool) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, __file__, "--child", "--preset", preset_name, "--steps", str(steps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["threads"] == threads, result
    return statistics.median(result["times"])


def busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="VIVI-Ex(4)")
    ap.add_argument("--load", type=int, default=1, help="busy processes competing with the step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all settings (medians are taken over rounds)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.preset, a.steps)
        return
    cores = os.cpu_count() or 1
    settings = [("threads=all", cores, False), ("threads=all, PASSIVE", cores, True)]
    if cores - a.load > 1:
        settings.append((f"threads={cores - a.load} (all-load)", cores - a.load, False))
    settings.append(("threads=1", 1, False))
    print(f"{a.preset} tiny, fixed-batch full step; {cores} cores; load: {a.load} busy process(es); "
          f"{a.rounds} rounds of {a.steps} steps per setting")
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        for load in (0, a.load):
            procs = busy(load)
            try:
                time.sleep(0.5)
                for name, threads, passive in settings:
                    t = run_setting(a.preset, a.steps, threads, passive)
                    times.setdefault((name, load), []).append(t)
                    print(f"  round {r + 1}, load {load}: {name:24s} {t * 1000:7.1f} ms", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    base = statistics.median(times[(settings[0][0], 0)])
    print(f"\n{'setting':26s} {'no load ms':>11s} {'/ default':>9s} {'load ms':>9s} {'/ default':>9s}")
    for name, _, _ in settings:
        quiet, loaded = statistics.median(times[(name, 0)]), statistics.median(times[(name, a.load)])
        print(f"{name:26s} {quiet * 1000:11.1f} {quiet / base:9.2f} {loaded * 1000:9.1f} {loaded / base:9.2f}")
    print("(/ default: against threads=all with no load, measured in this run)")


if __name__ == "__main__":
    main()
