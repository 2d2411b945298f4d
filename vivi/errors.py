"""The one exception type a user should ever see.

Library code raises :class:`UserError` for bad input (a missing folder, a corrupt file, an
unknown preset). The CLI prints its message on one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the reason."""
