r"""Files that are never half-written, outputs that never destroy inputs, and locks.

* :func:`atomic_path` / ``atomic_write_*``: write a temporary file beside the target and rename
  it into place only on success, so readers never see a torn file and a failure leaves none.
* :func:`create_exclusive` / :func:`open_locked`: open a new file that must not exist yet
  (``O_EXCL``) and hold an advisory lock on it while writing, so two runs can never write one
  output at once; :class:`FileLock`: the same for a whole run (a lock file beside its outputs).
  Locks are ``flock``\ s: they die with the process, so a killed run never leaves a stale one.
* :func:`check_output_path`: a path could be written --
  a name the file system takes, not under ``/proc``, ``/sys`` or ``/dev``, not a directory or
  special file, a writable folder; nothing is created (validation happens before any output
  is touched). :func:`check_input_path`: the same for a file to read.
* :func:`check_not_inputs`: no command writes over one of its own inputs (checkpoint, data
  root, input TSV and its sidecar, config file): compared by resolved path and by
  ``os.path.samefile`` (symlinks and hard links included). :func:`check_distinct`: two outputs
  of one command are two files.

Every failure is a :class:`~robustmaxup.errors.UserError` (a
:class:`~robustmaxup.runtime.checks.FieldError` naming the field for outputs), one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

import torch

from robustmaxup.errors import UserError, ref
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.text import safe_text

log = logging.getLogger("robustmaxup")

#: pseudo file systems no output may go to (``/dev/shm`` is ordinary memory and allowed)
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_ALLOWED_UNDER_SPECIAL = ("/dev/shm",)


def shown(path: str | os.PathLike, limit: int = 240) -> str:
    """A path for a one-line message: control characters escaped, long ones shortened."""
    text = safe_text(os.fspath(path))
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-(limit // 2 - 1):]


def _fail(field: str | None, problem: str) -> UserError:
    return FieldError(field, problem) if field else UserError(problem)


def _nearest_existing(path: Path) -> Path:
    probe = Path(os.path.abspath(path))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def _resolved(path: str | os.PathLike) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def check_path_text(path: str | os.PathLike, field: str | None = "out", what: str = "") -> Path:
    """``Path(path)`` unless no file system could take it: empty, a NUL byte, a name longer
    than the folder's ``NAME_MAX`` or a path longer than ``PATH_MAX``."""
    label = f"{what} " if what else ""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise _fail(field, f"{label}is empty; name a file")
    if "\x00" in text:
        raise _fail(field, f"{label}{shown(text)} contains a NUL character")
    p = Path(text)
    try:
        name_max = os.pathconf(_nearest_existing(p.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in p.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise _fail(field, f"{label}{shown(text)} has a name too long for the file system "
                               f"({size} bytes, at most {name_max})")
    if len(os.fsencode(os.path.abspath(text))) >= 4096:
        raise _fail(field, f"{label}{shown(text)} is too long a path (at most 4095 bytes)")
    return p


def _special_root(path: str | os.PathLike) -> str | None:
    full = _resolved(path)
    if any(full == a or full.startswith(a + "/") for a in _ALLOWED_UNDER_SPECIAL):
        return None
    for root in SPECIAL_ROOTS:
        if full == root or full.startswith(root + "/"):
            return root
    return None


def check_output_path(path: str | os.PathLike, field: str = "out", *, kind: str = "file") -> Path:
    """``Path(path)`` if a ``kind`` (``"file"`` or ``"dir"``) could be written there; else a
    FieldError naming ``field``. Nothing is created."""
    p = check_path_text(path, field)
    root = _special_root(p)
    if root is not None:
        raise FieldError(field, f"{shown(p)} lies under {root}, a special file system, not a place "
                                "for results; choose a regular location")
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise FieldError(field, f"cannot use {shown(p)}: {e.strerror}") from None
    if st is not None:
        if kind == "file" and stat.S_ISDIR(st.st_mode):
            raise FieldError(field, f"{shown(p)} is a directory; name a file")
        if kind == "file" and not stat.S_ISREG(st.st_mode):
            raise FieldError(field, f"{shown(p)} is not a regular file (a device, pipe or socket); "
                                    "name a regular file")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise FieldError(field, f"{shown(p)} exists and is not a directory")
    probe = _nearest_existing(p if kind == "dir" and st is not None else p.parent)
    if not probe.is_dir():
        raise FieldError(field, f"cannot create {shown(p)}: {shown(probe)} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FieldError(field, f"cannot create {shown(p)}: folder {shown(probe)} is not writable")
    return p


def _checkpoints_in(directory: Path) -> str:
    """``"; did you mean runs/x/best.pt or runs/x/last.pt?"`` when a directory given for a file
    holds checkpoints (a training run's directory), else ``""``."""
    try:
        found = sorted(f.name for f in directory.iterdir() if f.name.endswith((".pt", ".pth.tar")) and f.is_file())
    except OSError:
        return ""
    return f"; did you mean {' or '.join(shown(directory / f) for f in found[:3])}?" if found else ""


def check_input_path(path: str | os.PathLike, what: str, *, kind: str = "file") -> Path:
    """``Path(path)`` if it names an existing ``kind`` (``"file"``, ``"dir"`` or ``"any"``);
    else a one-line UserError starting with ``what`` (e.g. ``"checkpoint"``)."""
    p = check_path_text(path, None, what)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} {shown(p)} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {shown(p)}: {e.strerror}") from None
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {shown(p)} is a directory, not a file{_checkpoints_in(p)}")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {shown(p)} is not a regular file (a device, pipe or socket)")
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {shown(p)} is not a directory")
    return p


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode if both exist (symlinks and hard
    links), else the same resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    return _resolved(a) == _resolved(b)


Named = Sequence["tuple[str, str | os.PathLike | None]"]


def check_not_inputs(outputs: Named, inputs: Named) -> None:
    """FieldError if an output is one of the inputs: ``outputs`` are ``(field, path)``,
    ``inputs`` ``(description, path)`` (e.g. ``("the checkpoint", ckpt)``); None paths are
    skipped. No command may write over what it reads."""
    for field, out in outputs:
        if out is None:
            continue
        for what, src in inputs:
            if src is not None and same_file(out, src):
                raise FieldError(field, f"{shown(out)} is {what}, an input of this command; writing "
                                        "it would destroy it; choose another path")


def check_distinct(outputs: Named, describe: Mapping[str, str] | None = None) -> None:
    """FieldError if two outputs of one command are one file. ``describe`` maps an output's path
    (``str(path)``) to words for it where its field alone would mislead (e.g. "the per-example
    TSV written beside out"); by default an output is "the <field> file"."""
    seen: list[tuple[str, str | os.PathLike]] = []
    for field, out in outputs:
        if out is None:
            continue
        for other, path in seen:
            if same_file(out, path):
                what = (describe or {}).get(str(path), f"the {other} file")
                raise FieldError(field, f"{shown(out)} is also {what}; choose distinct files")
        seen.append((field, out))


def _put_in_place(tmp: Path, path: Path, exclusive: bool) -> None:
    if exclusive:
        try:
            os.link(tmp, path)  # atomic, and fails if ``path`` exists
            return
        except FileExistsError:
            raise
        except OSError as e:  # no hard links on this file system: check, then rename
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
    os.replace(tmp, path)


def _fsync(path: Path, *, directory: bool = False) -> None:
    """Flush ``path`` to the disk. A folder's flush (which makes a rename durable) is best-effort:
    some file systems refuse to open or sync folders."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no file behind; the file is
    flushed to the disk before it is renamed, so neither does a power cut. A file-system
    failure (no space, read-only, permissions) is a one-line UserError. ``exclusive``: never
    replace an existing ``path`` (it is linked into place, which fails if one appeared).
    """
    path = Path(path)
    try:
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the data reaches the disk before the name does: a power cut
        _put_in_place(tmp_path, path, exclusive)  # leaves the old file or the new, never a stub
        _fsync(path.parent, directory=True)
    except FileExistsError:
        raise UserError(f"{shown(path)} already exists (another run may have written it); "
                        "choose another file") from None
    except OSError as e:
        raise UserError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, exclusive: bool = False) -> None:
    with atomic_path(path, exclusive=exclusive) as tmp:
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
        raise UserError(f"{what} {shown(path)} already exists (another run may be writing it); "
                        f"choose another output or resume it ({ref('resume', True)})") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {shown(path)}: {e.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, saying so in the log when it creates the directory (a typo in an output
    path should not pass unseen)."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    log.info("created directory %s", shown(path))


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check it is a writable directory; UserError otherwise."""
    path = Path(path)
    try:
        make_dirs(path)
    except OSError as e:
        raise UserError(f"cannot create directory {shown(path)}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"directory {shown(path)} is not writable; choose another output location")
    return path


def _lock_or_fail(fd: int, message: str) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(message) from None
        raise UserError(f"cannot lock: {e.strerror}") from None


def open_locked(path: str | os.PathLike, *, append: bool, what: str = "output") -> IO[str]:
    """Open ``path`` for writing under an exclusive advisory lock held until it is closed.

    ``append=False`` creates the file and fails if it exists (``O_EXCL``); ``append=True`` opens
    an existing file (or creates it) for appending. Either way a second process asking for the
    same file while the first holds it gets a one-line UserError instead of interleaving rows.
    The lock dies with the process, so a killed run never leaves a stale lock.
    """
    path = Path(path)
    if append:
        try:
            f = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot open {what} {shown(path)}: {e.strerror}") from None
    else:
        f = create_exclusive(path, what=what)
    try:
        _lock_or_fail(f.fileno(), f"{what} {shown(path)} is being written by another run; wait for "
                                  "it or choose another output")
    except UserError:
        f.close()
        raise
    return f


class FileLock:
    """An exclusive lock on a whole run, held through a lock file (``flock``): a second run
    asking for it gets a one-line UserError. The lock dies with the process (a kill leaves at
    most an unlocked file, which the next run takes over); :meth:`release` removes the file.

    Example::

        with FileLock("runs/a/.lock", what="run directory runs/a"):
            ...   # only one process gets here at a time
    """

    def __init__(self, path: str | os.PathLike, *, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise UserError(f"cannot create the lock file {shown(self.path)}: {e.strerror}") from None
            try:
                _lock_or_fail(fd, f"{self.what} is in use by another run (it holds "
                                  f"{shown(self.path)}); wait for it to finish or choose another output")
            except UserError:
                os.close(fd)
                raise
            try:  # the previous holder may have removed the file between our open and our lock
                st = os.stat(self.path)
                mine = os.fstat(fd)
                current = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)
        raise UserError(f"cannot lock {shown(self.path)}: it keeps being replaced; is another run starting?")

    def release(self, *, remove: bool = True) -> None:
        """Give the lock up (removing its file first, while still holding it)."""
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


#: checkpoint names a run directory gives every run; default outputs prefix the run's folder
_GENERIC_STEMS = frozenset({"last", "best", "checkpoint", "model", "final"})


def file_label(path: str | os.PathLike, limit: int = 80) -> str:
    """A short, file-name-safe label of an input file for default output names: its stem
    (``c10_maxup.pt`` -> ``c10_maxup``), with its folder's name in front when the stem is one a
    run directory gives every run (``runs/maxup/last.pt`` -> ``maxup-last``)."""
    import re

    p = Path(os.fspath(path))
    stem = p.name.split(".")[0] or p.name
    if stem in _GENERIC_STEMS:
        folder = Path(_resolved(p)).parent.name
        stem = f"{folder}-{stem}" if folder else stem
    label = re.sub(r"[^A-Za-z0-9_+-]", "_", stem).strip("_") or "model"
    return label[:limit]
