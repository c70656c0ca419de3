"""What a result carries about how it was made, and the one rule for continuing a run.

* :func:`provenance`: package versions (torch, numpy, scipy, statsmodels, pyautoattack, CUDA),
  git SHA with a dirty-tree flag, Python, host, device and the time (UTC).
* :func:`checkpoint_record`: a checkpoint's path, hash and metadata, for result sidecars.
* :func:`check_resume`: certify, attack and train all refuse to continue an output made with
  other result-defining settings, through this one function.
* :func:`session`: one entry of an output's ``sessions``, the calls that made it (an output
  continued over several calls says which code and hardware made each part).

Example::

    check_resume({"n": 1000, "alpha": 0.001}, {"n": 100, "alpha": 0.001}, ["n", "alpha"], what="r.tsv")
    # UserError: cannot resume r.tsv: it was made with other settings: n (1000, now 100); ...
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import torch

import robustmaxup
from robustmaxup.errors import UserError, ref

_VERSIONED = ("numpy", "scipy", "statsmodels", "pyautoattack", "torchvision")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _run_git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git(*args: str) -> str | None:
    """git's output in the checkout this package was imported from, or None. The folder above
    the package must be the checkout's top: a copy or an install that merely sits inside some
    other repository (a venv in a project's tree) is not asked, lest it record that one's commit."""
    root = Path(robustmaxup.__file__).resolve().parent.parent
    top = _run_git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return None
    return _run_git(root, *args)


#: for a source tree copied without its ``.git`` (a container image, a remote machine that gets
#: the working tree only): the commit it was copied from, and ``1``/``0`` for a dirty tree
GIT_SHA_ENV, GIT_DIRTY_ENV = "ROBUSTMAXUP_GIT_SHA", "ROBUSTMAXUP_GIT_DIRTY"


@functools.lru_cache(maxsize=None)
def _tree_state() -> tuple[str | None, str | None]:
    """``git rev-parse HEAD`` and ``git status --porcelain`` of the tree, asked once per process:
    the code that runs is the code imported, so a result file the process itself writes into a
    tracked path (or an edit made while it runs) does not make its later records "dirty"."""
    return _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")


def git_sha() -> str | None:
    """The git commit of the source tree this package was imported from (when first asked in
    this process); outside git, the value of ``$ROBUSTMAXUP_GIT_SHA`` if set; else None."""
    out = _tree_state()[0]
    if out is not None:
        return out.strip() or None
    return os.environ.get(GIT_SHA_ENV, "").strip() or None


def git_dirty() -> bool | None:
    """Whether that tree had uncommitted changes to tracked files (when first asked in this
    process); outside git, ``$ROBUSTMAXUP_GIT_DIRTY`` (``1``/``0``) if set; else None."""
    out = _tree_state()[1]
    if out is not None:
        return bool(out.strip())
    flag = os.environ.get(GIT_DIRTY_ENV, "").strip()
    return {"1": True, "0": False}.get(flag)


@functools.lru_cache(maxsize=None)
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results (None where absent)."""
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, git SHA and dirty flag, hardware and the time (UTC) it was taken, for result
    sidecars and checkpoints."""
    info: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "robustmaxup": robustmaxup.__version__,
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device is not None:
        info["device"] = device_description(device)
    return info


def session(provenance: Mapping[str, Any], **done: Any) -> dict[str, Any]:
    """``{**done, "provenance": provenance}``, the entry of one call in an output's ``sessions``
    (``done``: how far the output was when the call began, e.g. ``from_epoch=3``), in plain JSON
    types: it is kept in checkpoints and state files that are loaded with ``weights_only``, which
    refuses torch's version string."""
    return json.loads(json.dumps({**done, "provenance": dict(provenance)}))


def checkpoint_record(path: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"checkpoint", "checkpoint_sha256", "checkpoint_meta"}`` for a result sidecar."""
    path = Path(path)
    return {"checkpoint": str(path.resolve()), "checkpoint_sha256": sha256_file(path),
            "checkpoint_meta": dict(meta)}


#: recorded values a user does not set directly, as a refused resume describes them
_DESCRIBED = {
    "checkpoint_sha256": "the checkpoint file's contents",
    "model_sha256": "the model's weights",
    "mode": "the command", "command": "the command",
    "noise_chunk": "Smooth's noise_chunk",
    "autocast": "the arithmetic (autocast dtype, from the precision and the device)",
    "seed_rule": "the seeding rule (an earlier robustmaxup's)",
}


def _show(key: str, value: Any) -> str:
    if key.endswith("_sha256") and isinstance(value, str):
        return f"sha256 {value[:12]}"  # enough to tell two hashes apart
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str], *,
                 what: str, arguments: Collection[str] = ()) -> None:
    """UserError unless ``saved`` and ``current`` agree on every key of ``keys`` that ``saved``
    records: a run is continued only under the settings that made it. A key (or a dict's entry)
    in ``arguments`` is one the user sets, named with :func:`~robustmaxup.errors.ref` (its flag
    on the command line). Other keys are described in words where they have a description, else
    shown by their record name."""
    diff = [k for k in keys if k in saved and saved[k] != current.get(k)]
    if diff:
        detail = ", ".join(_difference(k, saved[k], current.get(k), arguments) for k in diff)
        raise UserError(f"cannot resume {what}: it was made with other settings: {detail}; use the "
                        "same settings or another output")


def _named(key: str, arguments: Collection[str], parent: str = "") -> str:
    """How a refused resume names ``key``: as an argument, in words, or by its record name."""
    if key in arguments:
        return ref(key)
    return _DESCRIBED.get(key, f"{parent}.{key}" if parent else key)


def _difference(key: str, was: Any, now: Any, arguments: Collection[str] = ()) -> str:
    """``key (was, now now)``; for two dicts only the entries that differ (``key.sub (...)``)."""
    if key == "indices":
        return "the image/example selection"
    if isinstance(was, Mapping) and isinstance(now, Mapping):
        subs = [k for k in {**was, **now} if was.get(k) != now.get(k)]
        if subs:
            return ", ".join(f"{_named(k, arguments, key)} ({_show(k, was.get(k))}, now {_show(k, now.get(k))})"
                             for k in subs)
    return f"{_named(key, arguments)} ({_show(key, was)}, now {_show(key, now)})"
