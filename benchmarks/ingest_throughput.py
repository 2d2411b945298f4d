"""Frames decoded per second: `vivi ingest` vs `scenedetect` detect-content vs bare PyAV, one run.

    .venv/bin/python benchmarks/ingest_throughput.py --work /tmp/vivi-bench [--videos 4] [--seconds 45] [--size 1280x720]

The same H.264 files (clips assembled from photographs, benchmarks/ingest_clips.py) go through
commands, each timed as a whole (interpreter start-up included, as a user would run them):

- ``pyav``: bare PyAV decoding of every frame, nothing else, with the threading ``vivi ingest
  --workers 1`` uses (``thread_type="AUTO"``, FFmpeg's thread count): this script's
  ``--decode`` mode; ``pyav x2``: the same in 2 spawned processes, one file at a time each,
  each with FFmpeg's thread count; ``pyav x2 (1 thread each)``: the cores shared out, as
  ``--workers 2`` decodes on 2 cores. The faster of the two is the limit for ``--workers 2``;
- ``scenedetect detect-content``: ``scenedetect -i FILE detect-content`` for each file (its
  CLI takes one input): ContentDetector, default settings, its default decoder (OpenCV) and
  downscaling, no output files; ``scenedetect API (pyav backend)``: SceneManager +
  ContentDetector on its PyAV backend, in one process;
- ``vivi ingest --workers 1|2``: the command line, end to end (start-up, decode, shot
  detection, ~1 Hz samples, JPEG, shards, index) into a fresh folder; ``vivi --workers 2,
  FFmpeg's threads``: the same code with FFmpeg's thread count in each worker (vivi's choice
  before session 4), started through ``python -c`` (its workers skip re-running the ``vivi`` script).

Each is run ``--repeats`` times, interleaved; the best run counts (the machine is shared, so
the best is the least disturbed). Frames/s = frames in all files / wall seconds. Also printed:
CPU milliseconds per frame (all processes of the command, least of the repeats), which other
jobs on the machine disturb far less than wall time; ``--workers 2`` is compared with the faster
of the two bare 2-process runs (the best bare configuration), and with ``pyav x2`` as before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import av  # noqa: E402  (the --decode mode imports nothing else: its start-up is bare PyAV's)

VIVI = str(Path(sys.executable).with_name("vivi"))
SCENEDETECT = str(Path(sys.executable).with_name("scenedetect"))
# `vivi ingest` with FFmpeg's thread count in every worker instead of vivi's choice (1 per worker
# once the workers fill the cores), to show what that choice is worth on this machine.
VIVI_FFMPEG_THREADS = (sys.executable, "-c", "import sys, vivi.data.ingest as i; i._decode_threads = lambda w: 0; "
                       "from vivi.cli import main; sys.exit(main(sys.argv[1:]))")


def decode_count(path: str, threads: int = 0) -> int:
    """Bare decoding, as `vivi ingest` configures the stream (vivi.data.video.Video)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        return sum(1 for _ in container.decode(stream))


def run_pyav(files: list[str], processes: int, threads: int = 0) -> int:
    if processes == 1:
        return sum(decode_count(f, threads) for f in files)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        return sum(pool.map(decode_count, files, [threads] * len(files)))


def pyav_command(files: list[str], processes: int, threads: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--decode", *files, "--processes", str(processes),
                          "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def scenedetect_cli(files: list[str]) -> int:
    frames = 0
    for f in files:
        out = subprocess.run([SCENEDETECT, "-i", f, "detect-content"], check=True, capture_output=True, text=True)
        frames += int(re.search(r"Processed (\d+) frames", out.stdout + out.stderr).group(1))
    return frames


def run_scenedetect_api(files: list[str], backend: str) -> int:
    from scenedetect import SceneManager, open_video
    from scenedetect.detectors import ContentDetector

    frames = 0
    for f in files:
        manager = SceneManager()
        manager.add_detector(ContentDetector())
        frames += manager.detect_scenes(open_video(f, backend=backend))
    return frames


def run_vivi(src: Path, out: Path, workers: int, command: tuple[str, ...] = (VIVI,)) -> int:
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([*command, "ingest", str(src), str(out), "--workers", str(workers)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    return sum(r["num_frames"] for r in records)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the commands run here)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="where the test videos go (reused); required unless --decode")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--decode", nargs="+", metavar="FILE", help="(internal) bare decoding of FILEs; prints the count")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    a = parser.parse_args()
    if a.decode:
        print(run_pyav(a.decode, a.processes, a.threads))
        return
    from ingest_clips import write_clips

    size = tuple(int(x) for x in a.size.split("x"))
    root = write_clips(a.work / f"tp-{a.videos}x{a.seconds:g}s-{a.size}", a.videos, a.seconds, size, seed=7)
    src = root / "videos"
    files = sorted(str(p) for p in src.glob("*.mp4"))
    runs = {
        "pyav": lambda: pyav_command(files, 1, 0),
        "pyav x2": lambda: pyav_command(files, 2, 0),
        "pyav x2 (1 thread each)": lambda: pyav_command(files, 2, 1),
        "scenedetect detect-content": lambda: scenedetect_cli(files),
        "scenedetect API (pyav backend)": lambda: run_scenedetect_api(files, "pyav"),
        "vivi ingest --workers 1": lambda: run_vivi(src, a.work / "tp-out", 1),
        "vivi ingest --workers 2": lambda: run_vivi(src, a.work / "tp-out", 2),
        "vivi --workers 2, FFmpeg's threads": lambda: run_vivi(src, a.work / "tp-out", 2, VIVI_FFMPEG_THREADS),
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    cpu_ms: dict[str, list[float]] = {k: [] for k in runs}  # per frame
    frames: dict[str, int] = {}
    print(f"{len(files)} files, {a.size}; load before: {load()}", flush=True)
    for r in range(a.repeats):
        for name, run in runs.items():
            started, cpu_started = time.perf_counter(), cpu_seconds()
            frames[name] = run()
            seconds = time.perf_counter() - started
            rates[name].append(frames[name] / seconds)
            cpu_ms[name].append((cpu_seconds() - cpu_started) / frames[name] * 1e3)
            print(f"  run {r}: {name:<34} {frames[name]} frames in {seconds:6.1f} s = {rates[name][-1]:6.1f} frames/s"
                  f", {cpu_ms[name][-1]:.3f} ms CPU/frame  (load {load()})", flush=True)
    if len(set(frames.values())) != 1:
        print(f"note: frame counts differ between decoders: {frames}")
    best = {k: max(v) for k, v in rates.items()}
    print(f"\n{frames['pyav']} frames in {len(files)} files of {a.size}; best of {a.repeats} (median in brackets)\n")
    print("| run | frames/s | CPU ms/frame |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {best[k]:.1f} ({statistics.median(v):.1f}) | {min(cpu_ms[k]):.3f} |")
    best_bare_x2 = max(best["pyav x2"], best["pyav x2 (1 thread each)"])
    ratios = {
        "vivi w1 / scenedetect detect-content": best["vivi ingest --workers 1"] / best["scenedetect detect-content"],
        "vivi w2 / scenedetect detect-content": best["vivi ingest --workers 2"] / best["scenedetect detect-content"],
        "vivi w1 / pyav": best["vivi ingest --workers 1"] / best["pyav"],
        "vivi w2 / pyav x2": best["vivi ingest --workers 2"] / best["pyav x2"],
        "vivi w2 / best bare x2": best["vivi ingest --workers 2"] / best_bare_x2,
        "vivi w2 (FFmpeg's threads) / best bare x2": best["vivi --workers 2, FFmpeg's threads"] / best_bare_x2,
        "vivi w2 / pyav": best["vivi ingest --workers 2"] / best["pyav"],
    }
    print("\n| ratio | value | target |\n|---|---|---|")
    targets = {"scenedetect": ">= 1.0", "pyav": ">= 0.8"}
    for k, v in ratios.items():
        target = targets["scenedetect" if "scenedetect" in k else "pyav"]
        print(f"| {k} | {v:.2f}x | {target} |")
    print(f"\nload after: {load()}; cpus: {os.cpu_count()}")
    if a.json:
        results = {"frames": frames["pyav"], "rates": rates, "best": best, "ratios": ratios, "cpu_ms_per_frame": cpu_ms}
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
