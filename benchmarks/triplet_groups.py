"""The semi-hard triplet loss over a whole process batch against the same loss in the paper's groups
(``loss.triplet_group=16``: 16 exemplars x F frames per loss, Appendix B), computed block by block.

    .venv/bin/python benchmarks/triplet_groups.py [--exemplars 512] [--frames 8] [--dim 1000] [--rounds 5]

Times forward + backward of ``semi_hard_triplet_loss`` on L2-normalised random embeddings of
``exemplars x frames`` rows, three ways, alternated over ``--rounds`` (medians printed):

  whole    triplet_group=0: one N x N distance matrix, negatives from the whole batch
  grouped  triplet_group=16, the rows divided into blocks: G matrices of m x m (m = 16 x F)
  masked   the same groups as one N x N matrix with the other groups masked (the computation the
           blocks replace: the same loss, to check the speed-up is the layout's, not the loss's)

and the peak memory each takes (the resident set's high-water mark above where it was before the
step, in a fresh process per way). At paper scale one GPU
holds 2048 exemplars (16,384 rows): the whole matrix is 1 GiB of float32 and the mining makes
several more of its size; the blocks are 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from vivi.losses.triplet import semi_hard_triplet_loss

GROUP = 16


def _inputs(exemplars: int, frames: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(exemplars * frames, dim, generator=g)
    return x, torch.arange(exemplars).repeat_interleave(frames)


def _step(way: str, x: torch.Tensor, labels: torch.Tensor, frames: int) -> float:
    """Seconds of one forward + backward."""
    x = x.detach().requires_grad_(True)
    emb = torch.nn.functional.normalize(x, dim=1)
    rows = GROUP * frames
    start = time.perf_counter()
    if way == "whole":
        loss = semi_hard_triplet_loss(emb, labels)
    elif way == "grouped":
        loss = semi_hard_triplet_loss(emb, labels, group_rows=rows)
    else:
        loss = _masked(emb, labels, rows)
    loss.backward()
    return time.perf_counter() - start


def _masked(emb: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """The grouped loss through the whole-matrix path: one extra row of its own label makes the groups
    no longer divide the rows, so the other groups are masked in one N x N matrix. The row is a group
    of its own with no positive and no negative: it adds nothing to the loss."""
    pad = torch.nn.functional.normalize(torch.ones(1, emb.shape[1]), dim=1)
    padded = torch.cat([emb, pad])
    padded_labels = torch.cat([labels, labels[-1:] + 1])
    return semi_hard_triplet_loss(padded, padded_labels, group_rows=rows)


def _peak(way: str, a: argparse.Namespace) -> float:
    """MiB of resident-set growth at the peak of one forward + backward, in a fresh process (Linux:
    the high-water mark is reset first through /proc/self/clear_refs, so torch's import does not hide it)."""
    code = (
        "import sys, json, torch; sys.argv=['x']; import triplet_groups as t;"
        f"x, l = t._inputs({a.exemplars}, {a.frames}, {a.dim}); torch.set_num_threads(1);"
        "status = lambda key: int(next(s for s in open('/proc/self/status') if s.startswith(key)).split()[1]);"
        "open('/proc/self/clear_refs', 'w').write('5'); before = status('VmRSS:');"
        f"t._step({way!r}, x, l, {a.frames});"
        "print(json.dumps((status('VmHWM:') - before) / 1024))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__file__.rsplit("/", 1)[0])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exemplars", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    x, labels = _inputs(a.exemplars, a.frames, a.dim)
    ways = ("whole", "grouped", "masked")
    times: dict[str, list[float]] = {w: [] for w in ways}
    for w in ways:  # warm-up
        _step(w, x, labels, a.frames)
    for _ in range(a.rounds):
        for w in ways:
            times[w].append(_step(w, x, labels, a.frames))
    peaks = {w: _peak(w, a) for w in ways}
    n = len(labels)
    print(f"{a.exemplars} exemplars x {a.frames} frames = {n} rows of {a.dim}-d; groups of {GROUP} exemplars "
          f"({GROUP * a.frames} rows); torch threads {torch.get_num_threads()}")
    for w in ways:
        print(f"{w:<8} forward+backward {statistics.median(times[w]) * 1000:9.1f} ms   peak +{peaks[w]:8.0f} MiB")
    med = {w: statistics.median(t) for w, t in times.items()}
    print(f"ratio whole / grouped: time {med['whole'] / med['grouped']:.1f}x, memory {peaks['whole'] / max(peaks['grouped'], 1):.1f}x; "
          f"masked / grouped (same loss, one matrix): time {med['masked'] / med['grouped']:.1f}x")
    print(json.dumps({"median_s": med, "peak_mib": peaks}))


if __name__ == "__main__":
    main()
