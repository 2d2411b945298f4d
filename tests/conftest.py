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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_per_worker():
    """pytest-xdist runs one worker per core: more torch threads per worker only oversubscribe."""
    import os

    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)
    else:
        yield


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, busy CPU more threads make tiny training steps far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def extraction_calls(monkeypatch) -> list[str]:
    """Records the ``desc`` of every feature extraction an evaluation suite makes (to check resume)."""
    from vivi.evaluate import features, suite

    calls: list[str] = []
    real = features.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "extract_features", counting)
    return calls
