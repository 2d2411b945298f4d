"""Memory of the training set's video table, per process and per forked loader worker, against
the index records it is built from (what the table held up to commit a065bb1).

    .venv/bin/python benchmarks/table_memory.py --data DIR [--videos 100000]

Makes ``--videos`` index records by copying those of an ingested folder ``DIR`` (new keys, the
same shots and frames), then, each in a fresh process so one does not inherit the other's heap:

  records  the parsed records kept, as the old table kept them
  table    ``training_videos`` over the records, which keeps a few arrays and drops the records

For each: the resident memory the structure adds to the process, and the memory a forked child
(a ``DataLoader`` worker) makes its own by reading every video's key and shot lengths once, as
a pass of the sampler does (``Private_Dirty`` from /proc/PID/smaps_rollup: pages copied because
reading a Python object writes its reference count). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MiB = 1 << 20


def _kib(field: str, path: str) -> int:
    """A ``Field: N kB`` line of a /proc file, in KiB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _one(kind: str, data: str, videos: int) -> dict:
    """Runs in a fresh process: build ``kind`` over ``videos`` records and measure it."""
    import gc

    from vivi.config import preset
    from vivi.data.batches import shot_lengths, training_videos
    from vivi.data.shards import read_index

    template = [r for r in read_index([data]) if r.get("status") == "ok"]
    lines = [json.dumps(r) for r in template]

    def records():
        for i in range(videos):
            r = json.loads(lines[i % len(lines)])
            r["key"] = f"video_{i:08d}-0123456789"
            yield r

    gc.collect()
    before = _kib("VmRSS", "/proc/self/status")
    if kind == "records":
        held = list(records())
        read = lambda i: (held[i]["key"], shot_lengths(held[i]))  # noqa: E731 - what the old sampler read
    else:
        held = training_videos(records(), preset("VIVI-Ex(4)").data, data)
        read = lambda i: (held.key(i), held.shot_lengths(i))  # noqa: E731
    gc.collect()
    added = _kib("VmRSS", "/proc/self/status") - before
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a forked loader worker: one pass over every video
        for i in range(videos):
            read(i)
        own = _kib("Private_Dirty", "/proc/self/smaps_rollup")
        os.write(w, str(own).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    own = int(os.read(r, 64))
    baseline = _kib("Private_Dirty", "/proc/self/smaps_rollup")  # the parent's own, for scale
    return {"kind": kind, "videos": videos, "added_mib": added / 1024, "worker_private_mib": own / 1024,
            "parent_private_mib": baseline / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an ingested folder whose records are copied")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--one", choices=("records", "table"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.one, a.data, a.videos)))
        return
    rows = {}
    for kind in ("records", "table"):
        out = subprocess.run([sys.executable, __file__, "--data", a.data, "--videos", str(a.videos), "--one", kind],
                             capture_output=True, text=True, check=True)
        rows[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{a.videos} videos (records copied from {a.data})")
    print(f"{'kept':<10}{'process MiB':>14}{'per video B':>14}{'forked worker MiB':>20}")
    for kind, row in rows.items():
        per = row["added_mib"] * MiB / a.videos
        print(f"{kind:<10}{row['added_mib']:>14.1f}{per:>14.0f}{row['worker_private_mib']:>20.1f}")
    rec, tab = rows["records"], rows["table"]
    print(f"ratio records / table: process {rec['added_mib'] / max(tab['added_mib'], 0.1):.0f}x, "
          f"forked worker {rec['worker_private_mib'] / max(tab['worker_private_mib'], 0.1):.0f}x")


if __name__ == "__main__":
    main()
