"""The one exception type for bad input.

Library code raises :class:`UserError` (a ``ValueError``) for anything the user can fix: a bad
flag, a missing file, a checkpoint for another dataset. The CLI turns it into one line on stderr
and exit status 2; nothing below ``cli`` prints or exits.
"""


class UserError(ValueError):
    """Bad input the user can fix. The message names the problem and, where possible, the fix."""
