"""Peak RSS of the `vivi ingest` worker on a long 1080p video, sampled over time to show it flat.

    .venv/bin/python benchmarks/ingest_memory.py --work /tmp/vivi-bench [--seconds 150]

Writes a 1080p H.264 clip (assembled from photographs, benchmarks/ingest_clips.py; libx264
ultrafast), runs ``vivi ingest CLIP OUT --workers 1`` (the CLI always decodes in a worker
process) and polls /proc every 0.2 s for the resident set size (VmRSS) of every process of
that command. Reports each process's peak (VmHWM-like, from the samples), the worker's RSS at
each quarter of the run (flat = independent of the video's length), and
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the kernel's peak over all of them) as a check.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_clips import write_clip  # noqa: E402

VIVI = str(Path(sys.executable).with_name("vivi"))
MiB = 1 << 20


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/*/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    video = a.work / f"long-1080p-{a.seconds:g}s.mp4"
    if not video.exists():
        started = time.perf_counter()
        tmp = video.with_suffix(".tmp.mp4")
        truth = write_clip(tmp, seed=99, seconds=a.seconds, size=(1920, 1080), preset="ultrafast")
        tmp.rename(video)
        print(f"wrote {video}: {truth['num_frames']} frames in {time.perf_counter() - started:.0f} s", flush=True)
    out = a.work / "mem-out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen([VIVI, "ingest", str(video), str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    series: dict[int, list[tuple[float, float]]] = {}
    while proc.poll() is None:
        for pid in descendants(proc.pid):
            if (rss := rss_mib(pid)) is not None:
                series.setdefault(pid, []).append((time.perf_counter() - started, rss))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.returncode
    kernel_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    [record] = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    peaks = {pid: max(r for _, r in s) for pid, s in series.items()}
    worker = max((pid for pid in series if pid != proc.pid), key=peaks.get)  # the decoding child
    samples = series[worker]
    quarters = [samples[min(len(samples) - 1, int(q * len(samples)))][1] for q in (0.25, 0.5, 0.75, 1.0)]
    kept = sum(len(s["frames"]) for s in record["shots"])
    jpeg_bytes = sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))
    result = {
        "video": video.name, "frames": record["num_frames"], "size": [record["width"], record["height"]],
        "duration_s": record["duration_s"], "wall_s": round(wall, 1),
        "peak_rss_mib": {("main" if pid == proc.pid else "worker" if pid == worker else str(pid)): round(p, 1)
                         for pid, p in peaks.items()},
        "worker_rss_at_quarters_mib": [round(q, 1) for q in quarters],
        "ru_maxrss_children_mib": round(kernel_peak, 1),
        "kept_frames": kept, "shard_bytes": jpeg_bytes,
        "shard_bytes_per_video_second": round(jpeg_bytes / record["duration_s"]),
    }
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
