"""Progress of a long loop on stderr, one home for ``train``, ``certify``/``predict`` and
``attack``: a tqdm bar when stderr is a terminal, and otherwise (a batch job's log file, ``nohup``,
a CI log) a log line now and then, so a log shows how far a run got and when it will end
instead of either nothing or thousands of bar redraws.

Example::

    with Progress(total=500, desc="certify", unit="img", enabled=not quiet) as bar:
        for group in groups:
            ...
            bar.update(len(group))

Off a terminal the first line comes after ``first_after`` items (the warm-up is over, the
rate means something; by default after ``every`` seconds like the others), then at most one
every ``every`` seconds; each says done/total, the
rate (measured from the first update, so start-up and compilation do not skew it, or with
``skip_first=False`` from the start: for few, large, uniform steps such as attack chunks), the
ETA, and the ``note`` of the latest update (e.g. the robust accuracy so far).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

log = logging.getLogger("robustmaxup")

#: seconds between two progress log lines when stderr is not a terminal
LOG_EVERY_SECONDS = 60.0


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m 05s"``, ``"2h 07m"``, ``"3d 04h"``: short, for ETAs."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """A progress bar or periodic log lines (see module docstring); a context manager.

    Args:
        total: items in the whole loop; ``initial``: items already done (a resumed run).
        desc, unit: what is shown (``"certify"``, ``"img"``).
        enabled: False shows nothing (``--quiet``, ranks other than 0).
        first_after, every: off a terminal, the first line after this many items of this
            session (None: after ``every`` seconds), then at most one line per ``every`` seconds.
        skip_first: measure the rate from the first update (True) or from entering (False).
        terminal: None asks stderr; tests pass a bool. ``clock``: seconds (tests pass a fake).
    """

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, initial: int = 0,
                 first_after: int | None = None, every: float = LOG_EVERY_SECONDS,
                 skip_first: bool = True, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.done = int(total), desc, unit, int(initial)
        self.first_after, self.every, self.clock = first_after, float(every), clock
        self.enabled, self.skip_first = bool(enabled), bool(skip_first)
        self.terminal = stderr_is_terminal() if terminal is None else terminal
        self._bar: Any = None
        self._redirect: Any = None
        self._session = 0                       # items done by this process
        self._origin: tuple[float, int] | None = None  # (time, session items) after the first update
        self._last_log: float | None = None
        self._start = clock()
        self.lines = 0                          # log lines written (tests)

    def __enter__(self) -> "Progress":
        self._start = self.clock()
        if not self.skip_first:
            self._origin = (self._start, 0)
        if self.enabled and self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, initial=self.done,
                             dynamic_ncols=True, smoothing=0.1, leave=False)
            self._redirect = logging_redirect_tqdm()   # log lines print above the bar
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()
            self._bar = self._redirect = None

    def update(self, n: int, note: str = "") -> None:
        """``n`` more items are done; ``note`` is shown with them (bar postfix or log line)."""
        self.done += n
        self._session += n
        now = self.clock()
        if self._origin is None:
            self._origin = (now, self._session)
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self.enabled and self._due(now):
            self._log(now, note)

    def rate(self, now: float) -> float | None:
        """Items per second since the origin (the first update, or entering with
        ``skip_first=False``), or None before there is a measurement."""
        if self._origin is None or now <= self._origin[0] or self._session <= self._origin[1]:
            return None
        return (self._session - self._origin[1]) / (now - self._origin[0])

    def _due(self, now: float) -> bool:
        if self.done >= self.total:
            return False  # the caller's own summary line follows
        if self._last_log is None and self.first_after is not None:
            return self._session >= self.first_after
        return now - (self._start if self._last_log is None else self._last_log) >= self.every

    def _log(self, now: float, note: str) -> None:
        rate = self.rate(now)
        speed = eta = ""
        if rate:
            per = f"{1 / rate:.3g} s/{self.unit}" if rate < 1 else f"{rate:.3g} {self.unit}/s"
            speed, eta = f", {per}", f", ETA {format_duration((self.total - self.done) / rate)}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info("%s: %d/%d %s (%.0f%%)%s%s%s", self.desc, self.done, self.total, self.unit, pct,
                 speed, eta, f", {note}" if note else "")
        self._last_log = now
        self.lines += 1
