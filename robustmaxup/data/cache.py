"""The decode-once cache of archives and image trees: ``<cache_dir>/<name>-<stem>-<key>.npz``.

A tarball or an ImageFolder tree is decoded once into numpy arrays of both splits
(``{train,test}_images`` uint8 ``[N, C, H, W]``, ``{train,test}_labels`` int64 ``[N]``,
``classes`` str ``[K]``) and stored, written atomically, under a key that changes with the
source: tarballs by (path, size, mtime), trees by every file's (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from robustmaxup.data.splits import SPLITS
from robustmaxup.runtime.io import atomic_path, ensure_writable_dir

log = logging.getLogger(__name__)

__all__ = ["Arrays", "default_cache_dir", "archive_key", "tree_key", "load_cache", "cached"]

# Decoded arrays of both splits: {"train_images", "train_labels", "test_images", "test_labels",
# "classes"}; images uint8 [N, C, H, W], labels int64 [N], classes str [K].
Arrays = dict[str, np.ndarray]


def default_cache_dir() -> Path:
    """``$ROBUSTMAXUP_CACHE`` if set, else ``~/.cache/robustmaxup``."""
    env = os.environ.get("ROBUSTMAXUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustmaxup"


def archive_key(path: Path) -> str:
    """Cache key of an archive: (absolute path, size, mtime_ns). Cheap (the archive is not
    read) and changed by any rewrite of the file."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def tree_key(root: Path, files: list[Path]) -> str:
    """Cache key of an ImageFolder tree: its absolute path and every file's (relative path,
    size, mtime_ns), so adding, removing or rewriting any image invalidates the cache."""
    parts = [str(root.resolve())]
    for p in files:
        st = p.stat()
        parts.append(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def load_cache(cache: Path, keys: Sequence[str]) -> Arrays | None:
    """The given arrays from a cache file (only those are read), or None."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except Exception as e:  # noqa: BLE001 - unreadable cache: decode again
        log.warning("ignoring unreadable cache %s (%s); decoding again", cache, e)
        return None


def cached(what: Path, key: str, name: str, split: str, cache_dir: Path,
           decode: Callable[[], Arrays]) -> tuple[Arrays, str]:
    """``decode()``'s arrays, computed at most once per ``key`` and stored in ``cache_dir`` as
    ``<name>-<what>-<sha256(key)[:16]>.npz``, written atomically (a killed decode leaves no
    file). A cache hit reads only ``split``'s arrays. Returns ``(arrays, source description)``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = cache_dir / f"{name}-{what.name.split('.')[0] or 'data'}-{digest}.npz"
    source = f"{what} (cache {cache})"
    arrays = load_cache(cache, [f"{split}_images", f"{split}_labels", "classes"])
    if arrays is not None:
        log.debug("loaded %s from cache %s", what, cache)
        return arrays, source
    ensure_writable_dir(cache_dir)
    log.info("decoding %s once into %s", what, cache)
    t0 = time.perf_counter()
    arrays = decode()
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    log.info("decoded %d images in %.1fs", sum(len(arrays[f"{s}_labels"]) for s in SPLITS),
             time.perf_counter() - t0)
    return arrays, source
