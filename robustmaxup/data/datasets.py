"""Offline datasets: a registry from dataset name to a reader giving a split object.

Nothing here downloads. ``digits`` is bundled with scikit-learn; every other dataset is read from
a local ``root`` the user gives, and a missing or unrecognised root raises one
:class:`~robustmaxup.errors.UserError` naming what was looked for.

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
        return f"FolderSplit({self.name}/{self.split}: {len(self)} files, {len(self.classes)} classes)"


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
        cache_dir: where decoded archives are cached; default :func:`default_cache_dir`.

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
