"""Files that are never half-written: atomic replacement and exclusive creation.

* :func:`atomic_path` / ``atomic_write_*``: write a temporary file beside the target and rename
  it into place only on success, so readers never see a torn file and a failure leaves none.
* :func:`create_exclusive`: open a new file that must not exist yet (``O_EXCL``), so two runs
  can never write one output at once.
* :func:`check_writable_location`: a path's folder exists writable or could be created; nothing
  is created (validation happens before any output is touched).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from robustmaxup.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        buf = io.BytesIO()
        torch.save(obj, buf)
        tmp.write_bytes(buf.getvalue())


def create_exclusive(path: str | os.PathLike, *, what: str = "output") -> IO[str]:
    """Open ``path`` for writing, failing with a UserError if it already exists (``O_EXCL``: of
    two processes racing for one path, exactly one gets it)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise UserError(f"{what} {path} already exists (another run may be writing it); "
                        "choose another output or pass --resume") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}") from None
    return os.fdopen(fd, "w")


def check_writable_location(path: str | os.PathLike, *, field: str = "out") -> None:
    """UserError unless ``path``'s folder exists writable or could be created; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{field} {path} is a directory; name a file")
    probe = path.parent.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create the folder of {path}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"folder {probe} is not writable; choose another location for {path.name}")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check it is a writable directory; UserError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"directory {path} is not writable; choose another output location")
    return path


def open_locked(path: str | os.PathLike, *, append: bool, what: str = "output") -> IO[str]:
    """Open ``path`` for writing under an exclusive advisory lock held until it is closed.

    ``append=False`` creates the file and fails if it exists (``O_EXCL``); ``append=True`` opens
    an existing file (or creates it) for appending. Either way a second process asking for the
    same file while the first holds it gets a one-line UserError instead of interleaving rows.
    The lock dies with the process, so a killed run never leaves a stale lock.
    """
    import fcntl

    path = Path(path)
    if append:
        try:
            f = open(path, "a")
        except OSError as e:
            raise UserError(f"cannot open {what} {path}: {e.strerror}") from None
    else:
        f = create_exclusive(path, what=what)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"{what} {path} is being written by another run; wait for it or choose "
                        "another output") from None
    return f
