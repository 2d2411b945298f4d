"""Peak memory and time of reading index.jsonl into the training table, streamed in chunks (what
``vivi pretrain`` does at a run's start) against read whole (what it did up to session 15), and of
a restart, which reads the table the run saved (``RUN/video_table.npz``, vivi/data/table_cache.py)
instead, on an index of ``--videos`` records.

    .venv/bin/python benchmarks/index_read.py --data DIR [--videos 100000]

Writes an index of ``--videos`` records into a temporary ingest folder by copying those of the
ingested folder ``DIR`` (new keys, the same shots, frames and shard spans; its ``shards/`` linked),
then, each in a fresh process: ``training_videos(iter_index([folder]), ...)`` as ``pretrain`` calls
it, with the index given to the parser as one chunk of the whole file (``whole``) or in 16 MiB
chunks (``streamed``); then the table saved as a run saves it (``save``: build + write) and read
back as a restart reads it (``cached``: the index's stamp + the saved table). Prints the process's
peak resident memory above its resident memory just before (``ru_maxrss``, Linux), the seconds
taken, and the ratios. Every process of a torchrun job reads the index, so the peak is paid once
per GPU, at every restart.

The data record's fingerprint of the table (``data.json``, checked on resume) is timed beside it:
it is on the restart path too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def _one(mode: str, folder: str) -> dict:
    """Runs in a fresh process: build the table from ``folder`` and measure it."""
    import gc

    from vivi.config import preset
    from vivi.data import shards
    from vivi.data.batches import training_videos
    from vivi.data.table_cache import cache_key, load_table, save_table
    from vivi.train.data_record import data_record

    cfg, run = preset("VIVI-Ex(4)").data, Path(folder) / "run"
    if mode == "whole":  # the whole file as one chunk, as read_bytes gave it before
        shards.read_chunks = lambda path, size=0: iter([Path(path).read_bytes()])
    gc.collect()
    before = _rss_kib()
    start = time.perf_counter()
    if mode == "cached":
        table = load_table(run, cache_key([folder], cfg))
        assert table is not None, "no saved table: run the save mode first"
    else:
        table = training_videos(shards.iter_index([folder]), cfg, folder)
    if mode == "save":
        run.mkdir(exist_ok=True)
        save_table(run, cache_key([folder], cfg), table)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    fingerprint = data_record([folder], table, None)["fingerprint"]
    return {"mode": mode, "videos": len(table), "peak_mib": (peak - before) / 1024, "seconds": seconds,
            "fingerprint_s": time.perf_counter() - start, "fingerprint": fingerprint}


def _write_index(data: Path, folder: Path, videos: int) -> int:
    """``videos`` records copied from ``data``'s ok records into ``folder``; returns the index's bytes."""
    from vivi.data.shards import INDEX_NAME, SHARDS_DIR, read_records

    template = [r for r in read_records(data / INDEX_NAME) if r.get("status") == "ok"]
    (folder / SHARDS_DIR).symlink_to((data / SHARDS_DIR).resolve())
    with open(folder / INDEX_NAME, "w") as f:
        for i in range(videos):
            f.write(json.dumps({**template[i % len(template)], "key": f"video_{i:08d}-0123456789"}) + "\n")
    return (folder / INDEX_NAME).stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an ingested folder whose records are copied")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--one", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(*a.one)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = _write_index(Path(a.data), Path(tmp), a.videos)
        print(f"{a.videos} videos, index.jsonl {size / MiB:.0f} MiB (records copied from {a.data})")
        rows = {}
        for mode in ("whole", "streamed", "save", "cached"):
            out = subprocess.run([sys.executable, __file__, "--data", a.data, "--one", mode, tmp],
                                 capture_output=True, text=True, check=True, env=os.environ)
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'index read':<12}{'peak MiB':>10}{'seconds':>10}{'videos':>10}{'fingerprint s':>15}")
    for mode, row in rows.items():
        print(f"{mode:<12}{row['peak_mib']:>10.0f}{row['seconds']:>10.2f}{row['videos']:>10}{row['fingerprint_s']:>15.2f}")
    whole, streamed, cached = rows["whole"], rows["streamed"], rows["cached"]
    assert len({row["fingerprint"] for row in rows.values()}) == 1, "the tables differ"
    print(f"ratio whole / streamed: peak memory {whole['peak_mib'] / max(streamed['peak_mib'], 1):.1f}x, "
          f"time {whole['seconds'] / streamed['seconds']:.2f}x")
    print(f"ratio streamed / cached (a restart): peak memory {streamed['peak_mib'] / max(cached['peak_mib'], 1):.1f}x, "
          f"time {streamed['seconds'] / cached['seconds']:.1f}x; same table (fingerprints equal)")


if __name__ == "__main__":
    main()
