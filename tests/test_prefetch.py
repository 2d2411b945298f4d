"""DevicePrefetcher: batches come out in order and unchanged, fetched one step ahead, and an error
met while fetching ahead surfaces on the call for that batch, not a step early. (The CUDA stream
path is timed in benchmarks/step_overhead.py on a GPU; here the device is the CPU.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from vivi.errors import UserError
from vivi.train.prefetch import DevicePrefetcher

CPU = torch.device("cpu")


def _batches(n: int, fail_at: int | None = None, log: list[int] | None = None) -> Iterator[tuple[torch.Tensor, None]]:
    for i in range(n):
        if log is not None:
            log.append(i)
        if i == fail_at:
            raise UserError(f"shard {i}: truncated")
        yield torch.full((2, 3), float(i)), None


def test_batches_in_order_and_unchanged() -> None:
    got = list(DevicePrefetcher(_batches(5), CPU))
    assert [int(x[0, 0]) for x, _ in got] == [0, 1, 2, 3, 4]
    assert all(y is None and x.shape == (2, 3) for x, y in got)


def test_prefetch_fetches_once_ahead() -> None:
    log: list[int] = []
    batches = DevicePrefetcher(_batches(5, log=log), CPU)
    assert log == []  # nothing fetched before it is asked for
    x, _ = next(batches)
    assert int(x[0, 0]) == 0 and log == [0]
    batches.prefetch()
    batches.prefetch()  # a second call waits for the batch already fetched
    assert log == [0, 1]
    x, _ = next(batches)
    assert int(x[0, 0]) == 1 and log == [0, 1]


def test_error_surfaces_on_its_own_step() -> None:
    batches = DevicePrefetcher(_batches(5, fail_at=2), CPU)
    next(batches)
    batches.prefetch()
    x, _ = next(batches)  # step 1 still trains
    assert int(x[0, 0]) == 1
    batches.prefetch()  # fetching step 2 fails: kept for its turn
    with pytest.raises(UserError, match="shard 2: truncated"):
        next(batches)


def test_end_is_sticky() -> None:
    batches = DevicePrefetcher(_batches(1), CPU)
    next(batches)
    batches.prefetch()
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(batches)
