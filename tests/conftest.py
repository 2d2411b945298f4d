"""Shared fixtures: a tiny built-in world, rendered and ingested once per test worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from vivi.data.synth import render_corpus

    out = tmp_path_factory.mktemp("world")
    render_corpus(out, videos=3, seed=7, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_world, tmp_path_factory) -> Path:
    from vivi.data.ingest import ingest

    out = tmp_path_factory.mktemp("data")
    ingest(tiny_world / "videos", out, workers=1, short_side=96, progress=False)
    return out


def ground_truth(world: Path) -> dict[str, dict]:
    """Ground-truth records keyed by the absolute video path."""
    rows = [json.loads(line) for line in (world / "ground_truth.jsonl").read_text().splitlines()]
    return {str((world / r["video"]).resolve()): r for r in rows}
