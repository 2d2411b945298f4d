"""The one exception type a user should ever see.

Library code raises :class:`UserError` for bad input (a missing folder, a corrupt file, an
unknown preset). The CLI prints its message on one line and exits non-zero; anything else
is a bug and keeps its traceback. :class:`Interrupts` turns SIGINT and SIGTERM into the
KeyboardInterrupt the CLI reports as "interrupted; re-run", for commands that resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the reason."""

    prefix = "error: "  # how the command line introduces the message
    exit_code = 2  # what the command exits with (the README lists them all)
    # raised alike by every process of a torchrun job (a requested stop, a check all ranks agreed on):
    # rank 0 says it, the others exit quietly instead of repeating the line N times
    same_on_every_rank = False
    # said even when an interrupt (Ctrl-C, SIGTERM) arrives while it is on its way out: what it says
    # (another process stopped, where to resume) is why the interrupt came
    over_interrupt = False


class JobError(UserError):
    """A :class:`UserError` that every process of a torchrun job raises alike, from values they all
    share (a loss averaged over ranks, a check of what each rank sees): rank 0 reports it."""

    same_on_every_rank = True


def rank_zero() -> bool:
    """Whether this process speaks for a torchrun job (its rank 0), or runs alone."""
    return os.environ.get("RANK", "0") == "0"


def warn(message: str) -> None:
    """One line on stderr for input that was skipped or repaired, so nothing is dropped silently.
    Under torchrun only rank 0 says it: every rank reads the same input, N copies would be noise."""
    import sys

    from tqdm import tqdm

    if not rank_zero():
        return
    tqdm.write(f"vivi: warning: {message}", file=sys.stderr)  # stays clear of progress bars


def listed(items: list[str], limit: int = 3) -> str:
    """``a, b, c and 4 more``: the first few of a long list, for one-line messages."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message (its type's name if it has none): the reason
    in a one-line error, without the traceback-like detail torch and FFmpeg add below it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def detail_line(error: BaseException) -> str:
    """The first non-blank line below the first, else :func:`first_line`: torch's
    ``load_state_dict`` heads its error with a sentence and names the tensor that does not fit below."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else first_line(error)


class Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside :meth:`deferred` blocks, which
    finish first (ingest defers around a shard write, so the shard is closed and its videos kept)."""

    def __init__(self) -> None:
        self._depth, self._pending = 0, False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self._depth:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._pending and not self._depth:
            self._pending = False
            raise KeyboardInterrupt
