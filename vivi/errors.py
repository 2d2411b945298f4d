"""The one exception type a user should ever see.

Library code raises :class:`UserError` for bad input (a missing folder, a corrupt file, an
unknown preset). The CLI prints its message on one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the reason."""

    prefix = "error: "  # how the command line introduces the message


def warn(message: str) -> None:
    """One line on stderr for input that was skipped or repaired, so nothing is dropped silently.
    Under torchrun only rank 0 says it: every rank reads the same input, N copies would be noise."""
    import os
    import sys

    from tqdm import tqdm

    if os.environ.get("RANK", "0") != "0":
        return
    tqdm.write(f"vivi: warning: {message}", file=sys.stderr)  # stays clear of progress bars


def listed(items: list[str], limit: int = 3) -> str:
    """``a, b, c and 4 more``: the first few of a long list, for one-line messages."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
