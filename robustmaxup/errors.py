"""The one exception type for bad input, and how messages name other arguments.

Library code raises :class:`UserError` (a ``ValueError``) for anything the user can fix: a bad
flag, a missing file, a checkpoint for another dataset. The CLI turns it into one line on stderr
and exit status 2; nothing below ``cli`` prints or exits.

A message (error or log line) that tells the user to set an argument names it with :func:`ref`,
so each reader sees their own spelling: a Python caller reads ``pass resume=True``, and the
command line, which runs its commands inside :func:`flags_named`, reads ``pass --resume``::

    raise UserError(f"{path} already exists; pass {ref('resume', True)} to continue it")
"""

from __future__ import annotations

import contextlib
import difflib
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

_FLAG: ContextVar[Callable[[str], str] | None] = ContextVar("robustmaxup_flag", default=None)
_NO_VALUE: Any = object()


def ref(name: str, value: Any = _NO_VALUE) -> str:
    """The library argument ``name``, optionally set to ``value``, as a message should name it.

    From Python: ``name`` / ``name=value!r``. Inside :func:`flags_named` (the command line):
    ``--flag`` / ``--flag value`` (``True`` or ``False``: the switch alone; a list or tuple:
    its items, space-separated).

    >>> ref("lr_milestones", (30, 60))
    'lr_milestones=(30, 60)'
    >>> with flags_named(lambda name: "--" + name.replace("_", "-")):
    ...     ref("lr_milestones", (30, 60))
    '--lr-milestones 30 60'
    """
    flag = _FLAG.get()
    if flag is None:
        return name if value is _NO_VALUE else f"{name}={value!r}"
    if value is _NO_VALUE or isinstance(value, bool):
        return flag(name)
    if isinstance(value, (list, tuple)):
        return " ".join([flag(name), *map(str, value)])
    return f"{flag(name)} {value}"


@contextlib.contextmanager
def flags_named(flag: Callable[[str], str]) -> Iterator[None]:
    """Within the block, :func:`ref` names each argument as ``flag(name)`` (its command-line flag)."""
    token = _FLAG.set(flag)
    try:
        yield
    finally:
        _FLAG.reset(token)


def did_you_mean(value: Any, options: Iterable[Any], *, show: Callable[[Any], str] = repr) -> str:
    """``"; did you mean X?"`` naming the option closest to a refused ``value``, or ``""``.

    An option equal but for case wins (``'linf'`` -> ``'Linf'``); otherwise the closest spelling
    (difflib), if any is close. ``show`` writes the option (``repr``; :func:`ref` for a setting).

    >>> did_you_mean("linf", ["Linf", "L2"])
    "; did you mean 'Linf'?"
    >>> did_you_mean("cifar01", ["cifar10", "cifar100", "digits"])
    "; did you mean 'cifar10'?"
    >>> did_you_mean("zzz", ["Linf", "L2"])
    ''
    """
    if not isinstance(value, str):
        return ""
    names = {str(o): o for o in options}
    same_case = [o for n, o in names.items() if n.lower() == value.lower()]
    close = same_case or [names[n] for n in difflib.get_close_matches(value, list(names), n=1)]
    return f"; did you mean {show(close[0])}?" if close else ""


class UserError(ValueError):
    """Bad input the user can fix. The message names the problem and, where possible, the fix."""
