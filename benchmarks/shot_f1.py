"""Shot-boundary F1 at +-1 frame: our detectors vs PySceneDetect with default settings, one run.

    .venv/bin/python benchmarks/shot_f1.py --work /tmp/vivi-bench [--world-videos 40] [--clips 8]

Two sets, both with exact ground truth: (a) the built-in world (``vivi synth``, 96x96 at
4 fps) and (b) clips assembled from photographs (benchmarks/ingest_clips.py: not real
video, see there), 640x360 at 25 fps. Detectors:

- ``vivi histogram`` / ``vivi content`` / ``vivi adaptive``: ``vivi ingest --detector NAME``'s
  shot lists, from our one decode pass (PyAV);
- ``scenedetect content`` / ``scenedetect adaptive``: ``ContentDetector()`` / ``AdaptiveDetector()``
  with default settings behind PySceneDetect's own SceneManager and decoder (OpenCV backend),
  as ``scenedetect detect-content`` runs them: its raw cut list.

Matching rule. A true boundary is a span of frames: a hard cut at c is [c, c] (c is the first
frame of the new shot); a gradual transition with inclusive frames [s, e] is [s, e + 1] (from
the first changed frame to the first frame of the new shot). A detected boundary is a span
too: a cut c is [c, c]; between consecutive shots A and B of a shot list it is
[A.end + 1, B.start] (our detector leaves transition frames out of shots). A detection is
correct if its span overlaps the true span widened by one frame on each side (for hard cuts:
within +-1 frame). Each true boundary matches at most one detection (greedy, in order);
precision = matched / detected, recall = matched / true, F1 their harmonic mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_clips import write_clips  # noqa: E402

from vivi.data.detectors import make_frame_detector  # noqa: E402
from vivi.data.shots import Shot  # noqa: E402
from vivi.data.synth import render_corpus  # noqa: E402
from vivi.data.video import Video  # noqa: E402

Span = tuple[int, int]


def true_spans(truth: dict) -> list[tuple[Span, str]]:
    spans = [((c, c), "cut") for c in truth["cuts"]]
    spans += [((t["start_frame"], t["end_frame"] + 1), "gradual") for t in truth["transitions"]]
    return sorted(spans)


def shot_spans(shots: list[Shot]) -> list[Span]:
    return [(a.end_frame + 1, b.start_frame) for a, b in zip(shots, shots[1:])]


def match(detected: list[Span], truth: list[tuple[Span, str]], tolerance: int = 1) -> dict[str, int]:
    """Counts of true positives (per kind), false positives and misses under the rule above."""
    used: set[int] = set()
    counts = {"tp_cut": 0, "tp_gradual": 0, "n_cut": 0, "n_gradual": 0, "detected": len(detected)}
    for (start, end), kind in truth:
        counts[f"n_{kind}"] += 1
        for i, (a, b) in enumerate(detected):
            if i not in used and a <= end + tolerance and b >= start - tolerance:
                used.add(i)
                counts[f"tp_{kind}"] += 1
                break
    return counts


def ours(name: str) -> Callable[[Path], list[Span]]:
    def detect(path: Path) -> list[Span]:
        with Video(str(path)) as video:
            detector = make_frame_detector(name, video.fps)
            width = 0
            for frame in video.frames():
                width = width or detector.width(frame.raw.width, frame.raw.height)
                detector.push(video.thumbnail(frame, width, detector.pixel_format))
        return shot_spans(detector.shots())

    return detect


def scenedetect(name: str) -> Callable[[Path], list[Span]]:
    from scenedetect import SceneManager, open_video
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    def detect(path: Path) -> list[Span]:
        manager = SceneManager()
        manager.add_detector({"content": ContentDetector, "adaptive": AdaptiveDetector}[name]())
        manager.detect_scenes(open_video(str(path)))  # default backend (OpenCV), default downscale
        starts = [start.get_frames() for start, _ in manager.get_scene_list()[1:]]
        return [(c, c) for c in starts]

    return detect


DETECTORS = {
    "vivi histogram": ours("histogram"),
    "vivi content": ours("content"),
    "vivi adaptive": ours("adaptive"),
    "scenedetect content": scenedetect("content"),
    "scenedetect adaptive": scenedetect("adaptive"),
}
BASELINE = "scenedetect content"


def evaluate(root: Path) -> dict[str, dict]:
    truths = [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]
    results = {}
    for name, detect in DETECTORS.items():
        started = time.perf_counter()
        total: dict[str, int] = {}
        for truth in truths:
            for k, v in match(detect(root / truth["video"]), true_spans(truth)).items():
                total[k] = total.get(k, 0) + v
        tp = total["tp_cut"] + total["tp_gradual"]
        precision = tp / max(total["detected"], 1)
        recall = tp / max(total["n_cut"] + total["n_gradual"], 1)
        results[name] = {
            **total, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "recall_cut": total["tp_cut"] / max(total["n_cut"], 1),
            "recall_gradual": total["tp_gradual"] / max(total["n_gradual"], 1),
            "seconds": time.perf_counter() - started,
        }
    return results


def table(title: str, results: dict[str, dict]) -> str:
    base = results[BASELINE]["f1"]
    r0 = next(iter(results.values()))
    lines = [
        f"### {title}: {r0['n_cut']} hard cuts, {r0['n_gradual']} gradual transitions",
        "",
        "| detector | precision | recall | F1 | F1 / scenedetect content | recall hard cuts | recall gradual | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['f1'] / max(base, 1e-9):.2f}x "
            f"| {r['recall_cut']:.3f} | {r['recall_gradual']:.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="where the test videos go (reused)")
    parser.add_argument("--world-videos", type=int, default=40)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--clip-seconds", type=float, default=40.0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    a = parser.parse_args()
    world = a.work / f"world-{a.world_videos}"
    if not (world / "ground_truth.jsonl").exists():
        render_corpus(world, videos=a.world_videos, seed=0, workers=1, progress=False)
    clips = write_clips(a.work / f"clips-{a.clips}x{a.clip_seconds:g}s-640x360", a.clips, a.clip_seconds, (640, 360))
    out = {}
    for title, root in [("(a) built-in world, 96x96 at 4 fps", world),
                        ("(b) clips assembled from photographs, 640x360 at 25 fps", clips)]:
        out[title] = evaluate(root)
        print(table(title, out[title]) + "\n", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
