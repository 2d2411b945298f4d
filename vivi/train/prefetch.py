"""Batches copied to the training device one step ahead.

On a GPU the copy of step s+1's frames (50 MB of uint8 at 256 px for a 256-frame batch) runs on
its own CUDA stream, on the copy engine, while step s computes; the step then finds its batch
already on the device. Measured on one H200 at paper scale (benchmarks/results/step-overhead):
the copy in the step's own stream, from the loader's pageable memory, took 7.5 ms of a 73 ms
step. The loader pins its batches (``pin_memory``) so the copy returns at once to the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def _to(item: object, device: torch.device) -> object:
    """Tensors (also inside tuples and lists, None kept) copied to ``device`` without waiting."""
    if isinstance(item, Tensor):
        return item.to(device, non_blocking=True)
    if isinstance(item, (tuple, list)):
        return type(item)(_to(x, device) for x in item)
    return item


def _record(item: object, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that ``stream`` uses ``item``'s memory, made on the copy stream."""
    if isinstance(item, Tensor):
        item.record_stream(stream)
    elif isinstance(item, (tuple, list)):
        for x in item:
            _record(x, stream)


class DevicePrefetcher(Generic[T]):
    """``batches`` (tensors, or tuples of tensors and None) as copies on ``device``, fetched one step ahead.

    ``next()`` returns the batch fetched by the last ``prefetch()`` (or fetches it now); the training
    loop calls ``prefetch()`` once it has queued a step's backward, so the CPU waits for the loader
    and starts the copy while the GPU runs the step. An error (or the end) met while fetching ahead
    is raised by the ``next()`` that would have returned that batch, not a step early: a run stopped
    by a bad shard still trains, and checkpoints, every step before it. On a CPU the copy is the
    identity and nothing overlaps, but the order of the loader's calls is the same.
    """

    def __init__(self, batches: Iterator[T], device: torch.device) -> None:
        self.batches = batches
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead: list[object] = []  # the one batch fetched ahead, if any
        self._error: Exception | None = None

    def prefetch(self) -> None:
        """Fetch the next batch and start its copy to the device, unless one is waiting already."""
        if self._ahead or self._error is not None:
            return
        try:
            item = next(self.batches)
        except Exception as e:  # StopIteration too: raised when its turn comes (Ctrl-C is not held back)
            self._error = e
            return
        if self.stream is None:
            self._ahead.append(_to(item, self.device))
            return
        with torch.cuda.stream(self.stream):
            self._ahead.append(_to(item, self.device))

    def __iter__(self) -> DevicePrefetcher[T]:
        return self

    def __next__(self) -> T:
        self.prefetch()
        if not self._ahead:  # kept: every later call raises it too, as an exhausted iterator does
            raise self._error  # type: ignore[misc]
        item = self._ahead.pop()
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            _record(item, current)
        return item  # type: ignore[return-value]
