"""Offline datasets: a registry from dataset name to a reader giving a split object.

Nothing here downloads. ``digits`` is bundled with scikit-learn; every other dataset is read from
a local ``root`` the user gives, and a missing or unrecognised root raises one
:class:`~robustmaxup.errors.UserError` naming what was looked for.

Accepted layouts of ``root``:

- digits: none (scikit-learn's bundled copy; fixed stratified 1,437 / 360 split).
- cifar10 / cifar100: torchvision's python format (``cifar-10-batches-py/`` or
  ``cifar-100-python/``, or the folder itself); an ImageFolder tree ``train/<class>/*`` +
  ``test/<class>/*`` (class order = sorted folder names); or a ``.tar.gz``/``.tgz``/``.tar`` of
  either (optionally under one top folder). Trees and tarballs are decoded once (PIL, straight
  from the tar stream) into ``<cache_dir>/<name>-<stem>-<key>.npz``, written atomically;
  tarballs are keyed by (path, size, mtime), trees by every file's (path, size, mtime).
- imagenet: ``train/<wnid>/*`` and ``val/<wnid>/*`` (split "test" reads ``val/``).

Two split types, one interface (``len``, ``split[i]``, ``classes``, ``info``, ``labels``,
``images``, ``batch``, ``subset``):

- :class:`ImageSplit`: the whole split as a uint8 tensor ``[N, C, H, W]`` (digits, CIFAR).
- :class:`FolderSplit`: an ImageFolder tree read lazily with torchvision transforms (ImageNet);
  ``images`` is None.

Example::

    from robustmaxup.data import load_split
    test = load_split("digits", "test")
    x, y = test[0]                 # float32 [1, 8, 8] in [0, 1], int
    xb, yb = test.batch([0, 1])    # float32 [2, 1, 8, 8], int64 [2]
"""

from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from robustmaxup.data.info import DatasetInfo, get_info
from robustmaxup.errors import UserError
from robustmaxup.registry import Registry
from robustmaxup.utils import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "ImageSplit", "FolderSplit", "Split", "READERS", "load_split", "train_val_split",
    "default_cache_dir", "CIFAR10_CLASSES",
]

Indices = Sequence[int] | torch.Tensor | np.ndarray

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _as_index(indices: Indices) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()


# --------------------------------------------------------------------------------------------
# Split types
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ImageSplit:
    """A dataset split held whole in memory as uint8 pixels.

    Args:
        info: the dataset's :class:`DatasetInfo` (shape, normalisation).
        split: ``"train"``, ``"test"`` or a derived name (``"train[val]"``).
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``, values in ``0..len(classes)-1``.
        classes: class names in label order.
        source: where the pixels came from (for provenance).

    ``split[i]`` gives ``(float32 [C, H, W] in [0, 1], int)``; ``split.batch(idx)`` gives
    ``(float32 [k, C, H, W], int64 [k])`` on the CPU.
    """

    info: DatasetInfo
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] matching images")

    @property
    def name(self) -> str:
        return self.info.name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])

    def batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``[k, C, H, W]`` in [0, 1] and int64 ``[k]`` for the given indices (CPU)."""
        idx = _as_index(indices)
        return self.images[idx].float().div_(255), self.labels[idx].clone()

    def subset(self, indices: Indices, split: str | None = None) -> "ImageSplit":
        """The examples at ``indices`` (in that order), same classes and info."""
        idx = _as_index(indices)
        return ImageSplit(self.info, split or self.split, self.images[idx], self.labels[idx],
                          list(self.classes), self.source)

    def __repr__(self) -> str:
        return (f"ImageSplit({self.name}/{self.split}: {len(self)} x "
                f"{tuple(self.images.shape[1:])}, {len(self.classes)} classes)")


@dataclass(eq=False)
class FolderSplit:
    """An ImageFolder split read lazily from disk (ImageNet-sized data).

    Args:
        info: the dataset's :class:`DatasetInfo`.
        split: ``"train"`` or ``"test"``.
        samples: ``(path, label)`` pairs.
        classes: class (folder) names in label order.
        augment: True: RandomResizedCrop(224) + horizontal flip; False: Resize(256) +
            CenterCrop(224). Either ends in ToTensor (float32 [3, 224, 224] in [0, 1]).

    ``images`` is None; ``labels`` is an int64 ``[N]`` tensor. Random augmentations draw from
    torch's global RNG (seeded per worker by the DataLoader that :func:`make_loader` builds).
    """

    info: DatasetInfo
    split: str
    samples: list[tuple[str, int]]
    classes: list[str]
    augment: bool = False
    source: str = ""
    images: None = None
    labels: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.labels = torch.tensor([s[1] for s in self.samples], dtype=torch.int64)
        self._transform = _imagenet_transform(self.augment, self.info.image_shape[1:])

    @property
    def name(self) -> str:
        return self.info.name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return self._transform(im.convert("RGB")), int(label)

    def batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``[k, 3, 224, 224]`` and int64 ``[k]`` (CPU), read in the calling thread."""
        items = [self[int(i)] for i in _as_index(indices)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def subset(self, indices: Indices, split: str | None = None,
               augment: bool | None = None) -> "FolderSplit":
        """The examples at ``indices``; ``augment`` overrides the transform if given."""
        samples = [self.samples[int(i)] for i in _as_index(indices)]
        return FolderSplit(self.info, split or self.split, samples, list(self.classes),
                           self.augment if augment is None else augment, self.source)

    def __repr__(self) -> str:
        return (f"FolderSplit({self.name}/{self.split}: {len(self)} files, "
                f"{len(self.classes)} classes)")


Split = ImageSplit | FolderSplit


def _imagenet_transform(augment: bool, size: tuple[int, int]) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms as T

    if augment:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    resize = int(round(size[0] * 256 / 224))
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor()])


# --------------------------------------------------------------------------------------------
# Registry and entry points
# --------------------------------------------------------------------------------------------

# A reader maps (info, split, root, cache_dir) to a split object.
Reader = Callable[[DatasetInfo, str, "Path | None", Path], Split]
READERS: Registry[Reader] = Registry("dataset")


def default_cache_dir() -> Path:
    """``$ROBUSTMAXUP_CACHE`` if set, else ``~/.cache/robustmaxup``."""
    env = os.environ.get("ROBUSTMAXUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustmaxup"


def load_split(name: str, split: str, root: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> Split:
    """Read one split of a dataset from local files (never downloads).

    Args:
        name: dataset name (``digits``, ``cifar10``, ``cifar100``, ``imagenet``).
        split: ``"train"`` or ``"test"`` (ImageNet's ``"test"`` is its ``val/`` folder;
            ``"val"`` is accepted there as an alias).
        root: dataset location (folder, or a ``.tar.gz`` for CIFAR); unused for ``digits``.
        cache_dir: where decoded tarballs and image trees are cached; default
            :func:`default_cache_dir` (``$ROBUSTMAXUP_CACHE`` or ``~/.cache/robustmaxup``).

    Returns:
        an :class:`ImageSplit` (digits, CIFAR) or :class:`FolderSplit` (ImageNet).

    Example::

        train = load_split("cifar10", "train", root="data/cifar10-jpeg.tar.gz")
        train.images.shape     # torch.Size([50000, 3, 32, 32]), uint8
    """
    info = get_info(name)
    reader = READERS.get(name)
    if split == "val" and name == "imagenet":
        split = "test"
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
    root_path = Path(root).expanduser() if root is not None else None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return reader(info, split, root_path, cache)


def spread_indices(n: int, k: int) -> torch.Tensor:
    """``min(k, n)`` evenly spaced indices of ``range(n)`` (all of them when ``k >= n``): a fixed
    subset that covers every class even when a split is sorted by class, as ImageFolder data is.

    Example::

        >>> spread_indices(10, 4).tolist()
        [0, 2, 5, 7]
    """
    k = min(k, n)
    return torch.div(torch.arange(k) * n, k, rounding_mode="floor")


def train_val_split(split: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``val_size`` examples of ``split``, stratified by class, deterministic in ``seed``.

    Each class gives ``round(val_size * class_share)`` examples (then adjusted by one here and
    there so the total is exactly ``val_size``), chosen by a permutation seeded with ``seed``.
    Both parts keep ascending index order. A :class:`FolderSplit`'s validation part uses the
    evaluation transform (no augmentation).

    Args:
        split: usually the training split.
        val_size: number of held-out examples, ``0 < val_size < len(split)``.
        seed: selects which examples are held out.

    Returns:
        ``(train_part, val_part)``, disjoint, together all of ``split``.

    Example::

        train, val = train_val_split(load_split("digits", "train"), val_size=200, seed=0)
    """
    n = len(split)
    if not 0 < val_size < n:
        raise UserError(f"validation size {val_size} must be between 1 and {n - 1} "
                        f"(the {split.split} split has {n} examples)")
    val_idx = _stratified_pick(split.labels, val_size, seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[val_idx] = True
    train_idx = torch.nonzero(~mask).flatten()
    if isinstance(split, FolderSplit):
        val = split.subset(val_idx, split=f"{split.split}[val]", augment=False)
    else:
        val = split.subset(val_idx, split=f"{split.split}[val]")
    return split.subset(train_idx, split=f"{split.split}[-val]"), val


def _stratified_pick(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` indices into ``labels``, per-class proportional, sorted ascending."""
    g = torch.Generator().manual_seed(int(seed))
    n = labels.numel()
    classes, counts = torch.unique(labels, return_counts=True)
    quota = torch.floor(counts.double() * k / n).long()
    # Hand the remaining picks to the classes with the largest fractional parts.
    frac = counts.double() * k / n - quota.double()
    order = torch.argsort(frac, descending=True, stable=True)
    quota[order[: k - int(quota.sum())]] += 1
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(members.numel(), generator=g)[:q]])
    return torch.sort(torch.cat(picked)).values


# --------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled)
# --------------------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 360


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [1797,1,8,8], labels int64 [1797], train_idx, test_idx)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=0
    )
    return images, labels, np.sort(train_idx), np.sort(test_idx)


@READERS.register("digits")
def _read_digits(info: DatasetInfo, split: str, root: Path | None, cache_dir: Path) -> ImageSplit:
    """scikit-learn's 1,797 8x8 digits; fixed stratified split 1,437 train / 360 test
    (``train_test_split(stratify=labels, random_state=0)``); pixels ``round(v * 255 / 16)``."""
    if root is not None:
        log.debug("digits is bundled with scikit-learn; ignoring root %s", root)
    images, labels, train_idx, test_idx = _digits_arrays()
    idx = train_idx if split == "train" else test_idx
    return ImageSplit(info, split, torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),
                      [str(i) for i in range(10)], "sklearn.datasets.load_digits")


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: torchvision's python pickles, an ImageFolder tree, or a tarball of either
# --------------------------------------------------------------------------------------------


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


CIFAR_FORMATS = {
    "cifar10": CifarFormat(
        "CIFAR-10", "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        b"labels", "batches.meta", b"label_names", CIFAR10_CLASSES,
    ),
    "cifar100": CifarFormat(
        "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
        b"fine_labels", "meta", b"fine_label_names",
    ),
}

# Decoded arrays of both splits: {"train_images", "train_labels", "test_images", "test_labels",
# "classes"}; images uint8 [N, C, H, W], labels int64 [N], classes str [K].
Arrays = dict[str, np.ndarray]


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


def _archive_key(path: Path) -> str:
    """Cache key of an archive: (absolute path, size, mtime_ns). Cheap (the archive is not
    read) and changed by any rewrite of the file."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _tree_key(root: Path, files: list[Path]) -> str:
    """Cache key of an ImageFolder tree: its absolute path and every file's (relative path,
    size, mtime_ns), so adding, removing or rewriting any image invalidates the cache."""
    parts = [str(root.resolve())]
    for p in files:
        st = p.stat()
        parts.append(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def _load_cache(cache: Path, keys: Sequence[str]) -> Arrays | None:
    """The given arrays from a cache file (only those are read), or None."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except Exception as e:  # noqa: BLE001 - unreadable cache: decode again
        log.warning("ignoring unreadable cache %s (%s); decoding again", cache, e)
        return None


def _cached(what: Path, key: str, name: str, split: str, cache_dir: Path,
            decode: Callable[[], Arrays]) -> tuple[Arrays, str]:
    """``decode()``'s arrays, computed at most once per ``key`` and stored in ``cache_dir`` as
    ``<name>-<what>-<sha256(key)[:16]>.npz``, written atomically (a killed decode leaves no
    file). A cache hit reads only ``split``'s arrays."""
    import hashlib

    from robustmaxup.utils import ensure_writable_dir

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = cache_dir / f"{name}-{what.name.split('.')[0] or 'data'}-{digest}.npz"
    source = f"{what} (cache {cache})"
    arrays = _load_cache(cache, [f"{split}_images", f"{split}_labels", "classes"])
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


def _cifar_arrays(root: Path, name: str, split: str, fmt: CifarFormat, size: tuple[int, int],
                  cache_dir: Path) -> tuple[Arrays, str]:
    """Find and read a CIFAR variant at ``root`` in any of the accepted layouts."""
    if root.is_file() and root.name.endswith(ARCHIVE_SUFFIXES):
        return _cached(root, _archive_key(root), name, split, cache_dir,
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
            return _cached(root, _tree_key(root, files), name, split, cache_dir,
                           lambda: _read_image_tree(files, root, size))
    raise UserError(
        f"no {fmt.title} found at {root}: expected {fmt.folder}/ (or its files), train/ and "
        f"test/ class folders, or a .tar.gz of them"
    )


def _check_classes(classes: list[str], info: DatasetInfo, fmt: CifarFormat, where: str) -> None:
    if len(classes) != info.num_classes:
        raise UserError(f"{where} has {len(classes)} classes, {fmt.title} has "
                        f"{info.num_classes}; is --dataset right?")
    if fmt.known_classes is not None and classes != list(fmt.known_classes):
        raise UserError(f"class folders in {where} ({', '.join(classes)}) are not {fmt.title}'s "
                        f"classes ({', '.join(fmt.known_classes)})")


def _need_root(root: Path | None, info: DatasetInfo, hint: str) -> Path:
    if root is None:
        raise UserError(f"{info.name} needs a data root (--data-root): {hint}; nothing is "
                        f"downloaded")
    return root


def _read_cifar(info: DatasetInfo, split: str, root: Path | None, cache_dir: Path) -> ImageSplit:
    fmt = CIFAR_FORMATS[info.name]
    root = _need_root(root, info, f"{fmt.folder}/, train/ and test/ class folders, or a .tar.gz")
    arrays, source = _cifar_arrays(root, info.name, split, fmt, tuple(info.image_shape[1:]),
                                   cache_dir)
    classes = [str(c) for c in arrays["classes"]]
    _check_classes(classes, info, fmt, source)
    labels = arrays[f"{split}_labels"]
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
        raise UserError(f"labels in {source} are outside 0..{len(classes) - 1}")
    return ImageSplit(info, split, torch.from_numpy(arrays[f"{split}_images"]),
                      torch.from_numpy(arrays[f"{split}_labels"]), classes, source)


READERS.register("cifar10")(_read_cifar)
READERS.register("cifar100")(_read_cifar)


# --------------------------------------------------------------------------------------------
# ImageNet: ImageFolder train/ and val/
# --------------------------------------------------------------------------------------------


@READERS.register("imagenet")
def _read_imagenet(info: DatasetInfo, split: str, root: Path | None,
                   cache_dir: Path) -> FolderSplit:
    """``root/train/<wnid>/*`` and ``root/val/<wnid>/*`` (split "test" reads ``val/``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = _need_root(root, info, "a folder with train/ and val/ class folders")
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise UserError(f"no ImageNet found at {root}: expected train/ and val/ folders of "
                        f"class subfolders ({folder} is missing)")
    try:
        classes, index = find_classes(str(folder))
        samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise UserError(f"bad ImageNet folder {folder}: {e} (val/ must be sorted into class "
                        f"subfolders)") from None
    if len(classes) != info.num_classes:
        log.warning("%s has %d classes, ImageNet has %d", folder, len(classes), info.num_classes)
    return FolderSplit(info, split, [(p, int(t)) for p, t in samples], classes,
                       augment=split == "train", source=str(folder))
