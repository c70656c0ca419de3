"""SIGTERM as an interruption: ``timeout``, Slurm and ``kill`` end a run the way Ctrl-C does, so
``finally`` blocks run (locks released, an unstarted run's files removed).

Example::

    with sigterm_interrupts():
        run()              # SIGTERM raises Terminated (a KeyboardInterrupt) here
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["Terminated", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside
    :func:`sigterm_interrupts`."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored
    after. Outside the main thread (where no handler can be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
