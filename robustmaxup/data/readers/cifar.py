"""CIFAR-10 / CIFAR-100: torchvision's python pickles, an ImageFolder tree, or a tarball of either.

Accepted layouts of ``root``: torchvision's python format (``cifar-10-batches-py/`` or
``cifar-100-python/``, or the folder itself); an ImageFolder tree ``train/<class>/*`` +
``test/<class>/*`` (class order = sorted folder names); or a ``.tar.gz``/``.tgz``/``.tar`` of
either (optionally under one top folder). Trees and tarballs are decoded once (PIL, straight from
the tar stream) into the cache (:mod:`robustmaxup.data.cache`); python-format folders are read
directly. Pickles are read with an unpickler that only admits numpy arrays, so a hostile file
cannot run code.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmaxup.data.cache import Arrays, archive_key, cached, tree_key
from robustmaxup.data.readers.common import need_root
from robustmaxup.data.spec import DatasetSpec, Reader
from robustmaxup.data.splits import SPLITS, ImageSplit
from robustmaxup.errors import UserError, ref

log = logging.getLogger(__name__)

__all__ = [
    "read_cifar", "cifar_reader", "CifarFormat", "CIFAR10_FORMAT", "CIFAR100_FORMAT",
    "CIFAR10_CLASSES",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class CifarFormat:
    """Where torchvision's python format keeps one CIFAR variant."""

    title: str                    # for messages: "CIFAR-10"
    folder: str                   # "cifar-10-batches-py"
    files: dict[str, tuple[str, ...]]  # split -> pickle file names
    label_key: bytes              # b"labels" / b"fine_labels"
    meta_file: str                # "batches.meta" / "meta"
    meta_key: bytes               # b"label_names" / b"fine_label_names"
    known_classes: tuple[str, ...] | None = None  # folder names must equal these, if given


CIFAR10_FORMAT = CifarFormat(
    "CIFAR-10", "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    b"labels", "batches.meta", b"label_names", CIFAR10_CLASSES,
)
CIFAR100_FORMAT = CifarFormat(
    "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
    b"fine_labels", "meta", b"fine_label_names",
)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing else, so a
    hostile pickle cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure means "not a CIFAR batch"
        raise UserError(f"cannot read CIFAR batch {where}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a CIFAR batch (expected a dict)")
    return obj


def _batch_arrays(batch: dict, fmt: CifarFormat, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 3, 32, 32], int64 [N]) from one unpickled python-format batch."""
    if b"data" not in batch or fmt.label_key not in batch:
        raise UserError(f"{where} has no {b'data'!r}/{fmt.label_key!r} entries; "
                        f"is it a {fmt.title} batch?")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[fmt.label_key], dtype=np.int64)
    if data.size != len(labels) * 3072:
        raise UserError(f"{where} holds {data.size} bytes of pixels for {len(labels)} labels; "
                        f"expected 3072 (3x32x32) per image")
    return data.reshape(-1, 3, 32, 32), labels


def _meta_classes(meta: dict | None, fmt: CifarFormat, k: int) -> list[str]:
    if meta is not None and fmt.meta_key in meta:
        return [c.decode() if isinstance(c, bytes) else str(c) for c in meta[fmt.meta_key]]
    if fmt.known_classes is not None:
        return list(fmt.known_classes)
    log.warning("no %s meta file found; naming classes class_0..class_%d", fmt.title, k - 1)
    return [f"class_{i}" for i in range(k)]


def _python_arrays(batches: dict[str, bytes], meta: bytes | None, fmt: CifarFormat,
                   where: str) -> Arrays:
    """Arrays from the raw bytes of a python-format folder's files (name -> bytes)."""
    out: Arrays = {}
    for split, names in fmt.files.items():
        parts = [_batch_arrays(_unpickle(batches[n], f"{where}/{n}"), fmt, f"{where}/{n}")
                 for n in names]
        out[f"{split}_images"] = np.concatenate([p[0] for p in parts])
        out[f"{split}_labels"] = np.concatenate([p[1] for p in parts])
        if not len(out[f"{split}_labels"]):
            raise UserError(f"{where}: the {split} batches ({', '.join(names)}) hold no images")
    meta_dict = _unpickle(meta, f"{where}/{fmt.meta_file}") if meta is not None else None
    k = int(max(out["train_labels"].max(), out["test_labels"].max())) + 1
    out["classes"] = np.array(_meta_classes(meta_dict, fmt, k))
    return out


def _decode_image(data: bytes, where: str, size: tuple[int, int]) -> np.ndarray:
    """uint8 [3, H, W] from encoded image bytes (any format PIL reads)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise UserError(f"cannot decode image {where}: {e}") from None
    if arr.shape[:2] != size:
        raise UserError(f"image {where} is {arr.shape[1]}x{arr.shape[0]}, expected "
                        f"{size[1]}x{size[0]}")
    return arr.transpose(2, 0, 1)


# (split, class, file name, uint8 [3, H, W]) for every image of an ImageFolder tree.
FolderEntry = tuple[str, str, str, np.ndarray]


def _folder_position(path: str) -> tuple[str, str, str] | None:
    """``(split, class, file)`` if ``path`` looks like ``[prefix/]{train,test}/<class>/<file>``."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) >= 3 and parts[-3] in SPLITS and not any(p.startswith(".") for p in parts[-2:]):
        return parts[-3], parts[-2], parts[-1]
    return None


def _assemble(entries: list[FolderEntry], where: str) -> Arrays:
    """Arrays from ImageFolder entries: class order = sorted folder names, files sorted by name."""
    classes = {s: sorted({c for sp, c, _, _ in entries if sp == s}) for s in SPLITS}
    if not classes["train"] or not classes["test"]:
        missing = [s for s in SPLITS if not classes[s]]
        raise UserError(f"no {'/'.join(missing)} images found in {where}: expected "
                        f"train/<class>/* and test/<class>/*")
    if classes["train"] != classes["test"]:
        raise UserError(f"train/ and test/ in {where} have different class folders: "
                        f"{sorted(set(classes['train']) ^ set(classes['test']))}")
    index = {c: i for i, c in enumerate(classes["train"])}
    out: Arrays = {"classes": np.array(classes["train"])}
    for s in SPLITS:
        chosen = sorted((index[c], name, arr) for sp, c, name, arr in entries if sp == s)
        out[f"{s}_images"] = np.stack([arr for _, _, arr in chosen])
        out[f"{s}_labels"] = np.array([k for k, _, _ in chosen], dtype=np.int64)
    return out


def _tree_files(root: Path) -> list[Path]:
    """Every file at ``root/{train,test}/<class>/<file>`` (hidden names skipped), sorted."""
    return [p for split in SPLITS for p in sorted((root / split).glob("*/*"))
            if _folder_position(str(p)) is not None and p.is_file()]


def _read_image_tree(files: list[Path], root: Path, size: tuple[int, int]) -> Arrays:
    """Decode the ImageFolder ``files`` of ``root`` (every file is taken to be an image)."""
    entries = [(*_folder_position(str(p)), _decode_image(p.read_bytes(), str(p), size))
               for p in files]
    return _assemble(entries, str(root))


def _read_tarball(path: Path, fmt: CifarFormat, size: tuple[int, int]) -> Arrays:
    """Decode a tarball in one streaming pass, without extracting: either an ImageFolder tree
    (``[top/]train/<class>/*``, ``[top/]test/<class>/*``) or torchvision's python format
    (e.g. the official ``cifar-10-python.tar.gz``)."""
    entries: list[FolderEntry] = []
    py_files: dict[str, bytes] = {}
    wanted = {n for names in fmt.files.values() for n in names} | {fmt.meta_file}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                pos = _folder_position(member.name)
                base = member.name.rsplit("/", 1)[-1]
                is_py = base in wanted and f"/{fmt.folder}/" in f"/{member.name}"
                if pos is None and not is_py:
                    continue
                data = tar.extractfile(member).read()
                if is_py:
                    py_files[base] = data
                else:
                    entries.append((*pos, _decode_image(data, f"{path}:{member.name}", size)))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read archive {path}: {e}") from None
    if entries:
        return _assemble(entries, str(path))
    if all(n in py_files for names in fmt.files.values() for n in names):
        return _python_arrays(py_files, py_files.get(fmt.meta_file), fmt, f"{path}:{fmt.folder}")
    raise UserError(f"no {fmt.title} found in archive {path}: expected train/<class>/* and "
                    f"test/<class>/* images (optionally under one top folder) or {fmt.folder}/")


def _cifar_arrays(root: Path, name: str, split: str, fmt: CifarFormat, size: tuple[int, int],
                  cache_dir: Path) -> tuple[Arrays, str]:
    """Find and read a CIFAR variant at ``root`` in any of the accepted layouts."""
    if root.is_file() and root.name.endswith(ARCHIVE_SUFFIXES):
        return cached(root, archive_key(root), name, split, cache_dir,
                       lambda: _read_tarball(root, fmt, size))
    if root.is_dir():
        for py_dir in (root / fmt.folder, root):
            if all((py_dir / n).is_file() for names in fmt.files.values() for n in names):
                batches = {n: (py_dir / n).read_bytes() for ns in fmt.files.values() for n in ns}
                meta = py_dir / fmt.meta_file
                return (_python_arrays(batches, meta.read_bytes() if meta.is_file() else None,
                                       fmt, str(py_dir)), str(py_dir))
        if (root / "train").is_dir() and (root / "test").is_dir():
            files = _tree_files(root)
            return cached(root, tree_key(root, files), name, split, cache_dir,
                           lambda: _read_image_tree(files, root, size))
    raise UserError(
        f"no {fmt.title} found at {root}: expected {fmt.folder}/ (or its files), train/ and "
        f"test/ class folders, or a .tar.gz of them"
    )


def _check_classes(classes: list[str], spec: DatasetSpec, fmt: CifarFormat, where: str) -> None:
    if len(classes) != spec.num_classes:
        raise UserError(f"{where} has {len(classes)} classes, {fmt.title} has "
                        f"{spec.num_classes}; is {ref('dataset')} right?")
    if fmt.known_classes is not None and classes != list(fmt.known_classes):
        raise UserError(f"class folders in {where} ({', '.join(classes)}) are not {fmt.title}'s "
                        f"classes ({', '.join(fmt.known_classes)})")


def read_cifar(spec: DatasetSpec, split: str, root: Path | None, cache_dir: Path, *,
               fmt: CifarFormat) -> ImageSplit:
    """One split of the CIFAR variant ``fmt`` at ``root``, in any accepted layout (see the
    module docstring); the class count must match ``spec``."""
    root = need_root(root, spec, f"{fmt.folder}/, train/ and test/ class folders, or a .tar.gz")
    arrays, source = _cifar_arrays(root, spec.name, split, fmt, tuple(spec.image_shape[1:]),
                                   cache_dir)
    classes = [str(c) for c in arrays["classes"]]
    _check_classes(classes, spec, fmt, source)
    labels = arrays[f"{split}_labels"]
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
        raise UserError(f"labels in {source} are outside 0..{len(classes) - 1}")
    return ImageSplit(spec, split, torch.from_numpy(arrays[f"{split}_images"]),
                      torch.from_numpy(arrays[f"{split}_labels"]), classes, source)


def cifar_reader(fmt: CifarFormat) -> Reader:
    """The reader of the CIFAR variant ``fmt`` (what its ``DATASETS`` entry names)."""
    return functools.partial(read_cifar, fmt=fmt)
