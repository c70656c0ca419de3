"""Injected failures and pauses at named write boundaries, for crash and concurrency tests.

Every command calls :func:`fault_point` at each boundary between two writes (after a TSV
header, after each flushed row, between a run's files, ...). Normally it does nothing (one
environment look-up). Two environment variables turn it on:

* ``ROBUSTMAXUP_FAULT=<name>[:<count>][,<name>[:<count>]...]``: the ``count``-th time (default
  the first) the process reaches point ``name``, it ends at once with status 137, like
  ``kill -9``: no ``finally``, no flush, no atexit.
* ``ROBUSTMAXUP_PAUSE=<name>=<file>``: on reaching ``name`` the process creates ``file`` and
  waits until it is removed (at most :data:`PAUSE_LIMIT_S` seconds), so a test can start a
  second process while the first holds its locks.

The points (see each command's module):

* certify/predict (``<cmd>`` is ``certify`` or ``predict``): ``<cmd>.header`` (output created,
  locked and its header written), ``<cmd>.sidecar_started`` (the sidecar marked incomplete),
  ``<cmd>.row`` (after each flushed group of rows), ``<cmd>.merge`` (before the shards are
  merged, every row written), ``<cmd>.sidecar`` (before the final sidecar);
* attack: ``attack.locked``, ``attack.chunk`` (after each chunk's state save), ``attack.tsv``
  (TSV written, adv and JSON not), ``attack.adv`` (adv written, JSON not), ``attack.json``
  (JSON written, the state file not yet removed);
* train: ``train.locked`` (run directory locked, nothing written), ``train.config`` (after
  config.json), ``train.best`` (best.pt written, last.pt not), ``train.checkpoint`` (last.pt
  written, metrics.jsonl not), ``train.metrics`` (after metrics.jsonl).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

FAULT_ENV = "ROBUSTMAXUP_FAULT"
PAUSE_ENV = "ROBUSTMAXUP_PAUSE"
PAUSE_LIMIT_S = 120.0
_reached: Counter[str] = Counter()


def _faults(spec: str) -> dict[str, int]:
    out = {}
    for item in spec.split(","):
        name, _, count = item.strip().partition(":")
        if name:
            out[name] = int(count) if count.strip().isdigit() else 1
    return out


def fault_point(name: str) -> None:
    """A write boundary named ``name``: crash or pause here if the environment asks for it."""
    spec, pause = os.environ.get(FAULT_ENV), os.environ.get(PAUSE_ENV)
    if not spec and not pause:
        return
    _reached[name] += 1
    if spec and _faults(spec).get(name) == _reached[name]:
        sys.stderr.flush()
        os._exit(137)
    if pause:
        point, _, flag = pause.partition("=")
        if point == name and flag and _reached[name] == 1:
            with open(flag, "w") as f:
                f.write(f"{os.getpid()}\n")
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.02)
