"""Time the VTAB-1k protocol end to end for one model on mini-VTAB at tiny scale.

    .venv/bin/python benchmarks/vtab1k_time.py [MODEL] [--out results.json]

MODEL defaults to ``random:tiny`` (the tiny ResNet v2 every tiny preset trains; a trained
run has the same cost). Prints the wall time of the sweep (4 settings x 10 tasks), the
selection and the 3 final repetitions, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from vivi.data.tasks import load_tasks
from vivi.evaluate.encoders import load_encoder
from vivi.evaluate.report import results_table
from vivi.evaluate.suite import evaluate_tasks
from vivi.evaluate.vtab1k import VTAB1K_SCALES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="random:tiny")
    p.add_argument("--out", help="results JSON (default: a fresh temporary file, so nothing is resumed)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp()) / "vtab1k.json"
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
          f"scale tiny = {VTAB1K_SCALES['tiny']}", flush=True)
    tasks = load_tasks("mini-vtab")  # built (or read) before the clock starts
    start, cpu_start = time.perf_counter(), time.process_time()
    enc = load_encoder(a.model)
    results = evaluate_tasks(enc.model, tasks, "vtab1k", image_size=enc.image_size, out_json=out,
                             model_name=enc.name, scale="tiny", progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(results_table([results]))
    print(f"vtab1k tiny, {len(tasks)} tasks, model {a.model}: {seconds:.0f} s ({seconds / 60:.1f} min); "
          f"chosen lr={results['tasks'][0]['lr']} steps={results['tasks'][0]['steps']}; results {out}")
    print(f"process CPU time {cpu:.0f} s (all threads); load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
