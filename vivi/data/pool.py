"""Run a function over items in worker processes that may crash or hang, one item at a time each.

A decoder segfault, the OOM killer or a video that never finishes must cost one video, not
the run. ``concurrent.futures`` cannot do that: one dead worker breaks the whole pool, and a
running task cannot be stopped. Here every worker is a spawned process with its own pipe; the
parent waits on the pipes and the process sentinels together, turns a death or an overrun of
``timeout`` into a :class:`Failure` for that item (killing the worker), and starts a fresh one.
"""

from __future__ import annotations

import contextlib
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    """Why an item produced no result: a one-line reason."""

    reason: str


class _Worker(Generic[T]):
    """One spawned process serving items over a pipe; ``item`` is what it works on now."""

    def __init__(self, fn: Callable[[T], Any]) -> None:
        context = get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, fn), daemon=True)
        self.process.start()
        child.close()
        self.item: T | None = None
        self.deadline = float("inf")

    def assign(self, item: T, timeout: float | None) -> None:
        self.item = item
        self.deadline = time.monotonic() + timeout if timeout else float("inf")
        with contextlib.suppress(OSError):  # a worker that died idle: found dead on the next wait
            self.conn.send(item)

    def stop(self) -> None:
        """Kill the process (it may be stuck in a decoder) and release its pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """Worker loop: items in, results (or a Failure for an unexpected exception) out, until EOF."""
    # Ctrl-C, and SIGTERM sent to the whole job (SLURM, docker stop), are the parent's to handle: it
    # keeps what is finished and kills the workers; a worker dying first would mark its video failed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = fn(item)
        except Exception as e:  # a bug or an unforeseen library error: one item, not the run
            traceback.print_exc()
            result = Failure(f"unexpected {type(e).__name__}: {' '.join(str(e).split())}"[:300])
        conn.send(result)


def isolated_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, timeout: float | None = None
) -> Iterator[tuple[T, R | Failure]]:
    """``(item, fn(item) or Failure)`` in completion order, using up to ``workers`` processes.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    pending = deque(items)
    pool: list[_Worker[T]] = []
    try:
        while pending or any(w.item is not None for w in pool):
            for worker in pool:
                if worker.item is None and pending:
                    worker.assign(pending.popleft(), timeout)
            while pending and len(pool) < workers:
                pool.append(_Worker(fn))
                pool[-1].assign(pending.popleft(), timeout)
            busy = [w for w in pool if w.item is not None]
            wait_s = min(w.deadline for w in busy) - time.monotonic()
            ready_on = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            wait(ready_on, None if wait_s == float("inf") else max(0.0, wait_s))
            for worker in busy:
                outcome = _outcome(worker, timeout)
                if outcome is None:
                    continue
                item, worker.item = worker.item, None
                if isinstance(outcome, _Dead):
                    worker.stop()
                    pool.remove(worker)  # a fresh one starts while there is work left
                    outcome = outcome.failure
                yield item, outcome
    finally:
        for worker in pool:
            worker.stop()


@dataclass(frozen=True)
class _Dead:
    """The worker was lost (died or killed after its deadline) while on an item."""

    failure: Failure


def _overdue(worker: _Worker[Any]) -> bool:
    return time.monotonic() >= worker.deadline


def _outcome(worker: _Worker[Any], timeout: float | None) -> Any:
    """The worker's result if it sent one, a :class:`_Dead` if it died or overran, else None."""
    if worker.conn.poll():
        try:
            return worker.conn.recv()
        except (EOFError, OSError):
            pass  # the pipe closed: the process died
    elif worker.process.is_alive():
        if not _overdue(worker):
            return None
        worker.process.kill()
        return _Dead(Failure(f"timed out after {timeout:g} s (worker killed)"))
    worker.process.join(5)
    return _Dead(Failure(f"worker process died ({_exit_reason(worker.process.exitcode)})"))


def _exit_reason(code: int | None) -> str:
    """``killed by SIGSEGV`` for a negative exit code (a signal), else ``exit code N``."""
    if code is None or code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
    hint = ", e.g. the out-of-memory killer" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"
