"""The one dataset registry: ``DATASETS`` maps a name to its :class:`DatasetSpec`, which carries
everything about the dataset (classes, shape, normalisation, reader, training augmentation,
device residency, and the foreign-checkpoint architectures that default to it).

Adding a dataset is one ``DATASETS`` entry (plus a reader in :mod:`robustmaxup.data.readers`).

Example::

    from robustmaxup.data import DATASETS, load_split
    DATASETS.get("cifar10").mean          # (0.4914, 0.4822, 0.4465)
    split = load_split("digits", "test")  # digits needs no root
"""

from __future__ import annotations

import os
from pathlib import Path

from robustmaxup.data.augment import CropFlip
from robustmaxup.data.cache import default_cache_dir
from robustmaxup.data.readers import cifar_reader, read_digits, read_imagenet
from robustmaxup.data.readers.cifar import CIFAR10_FORMAT, CIFAR100_FORMAT
from robustmaxup.data.spec import DatasetSpec
from robustmaxup.data.splits import SPLITS, Split
from robustmaxup.errors import UserError, did_you_mean
from robustmaxup.registry import Registry
from robustmaxup.runtime.checks import FieldError

__all__ = ["DATASETS", "register_dataset", "get_info", "load_split", "foreign_dataset"]

DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to ``DATASETS`` under ``spec.name``."""
    return DATASETS.register(spec.name)(spec)


# Digits: scikit-learn's bundled 8x8 images; mean/std of its pixels on the [0, 1] scale. 1-px
# crops only: digits are not mirror-symmetric.
register_dataset(DatasetSpec(
    "digits", 10, (1, 8, 8), (0.3053,), (0.3760,), read_digits,
    augment=CropFlip(pad=1, flip=False), foreign_archs=("digits_cnn",), bundled=True,
    default_arch="digits_cnn",
))
# CIFAR-10 constants as in Cohen et al.'s released code, so their checkpoints load unchanged.
register_dataset(DatasetSpec(
    "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
    cifar_reader(CIFAR10_FORMAT), augment=CropFlip(pad=4, flip=True),
    foreign_archs=("cifar_resnet20", "cifar_resnet110", "preact_resnet18", "amp_preact_resnet18", "wrn_28_10",
                   "wrn_34_10"),
    default_arch="cifar_resnet110",
))
register_dataset(DatasetSpec(
    "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    cifar_reader(CIFAR100_FORMAT), augment=CropFlip(pad=4, flip=True), default_arch="cifar_resnet110",
))
# ImageNet: read lazily from disk; its random crops run in the loader's workers, not here.
register_dataset(DatasetSpec(
    "imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), read_imagenet,
    device_resident=False, foreign_archs=("resnet50",), split_aliases=(("val", "test"),),
    default_arch="resnet50",
))


def get_info(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; an unknown name is a UserError listing the known ones."""
    return DATASETS.get(name)


def foreign_dataset(arch: str) -> str | None:
    """The dataset a foreign-format checkpoint of architecture ``arch`` defaults to (the entry
    whose ``foreign_archs`` names it), or None when no dataset claims ``arch``."""
    claims = [name for name in DATASETS if arch in DATASETS.get(name).foreign_archs]
    return claims[0] if claims else None


def load_split(name: str, split: str, root: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> Split:
    """Read one split of a dataset from local files (never downloads).

    Args:
        name: dataset name (``digits``, ``cifar10``, ``cifar100``, ``imagenet``).
        split: ``"train"`` or ``"test"`` (ImageNet's ``"test"`` is its ``val/`` folder;
            ``"val"`` is accepted there as an alias).
        root: dataset location (folder, or a ``.tar.gz`` for CIFAR); unused for ``digits``.
        cache_dir: where decoded tarballs and image trees are cached; default
            :func:`~robustmaxup.data.cache.default_cache_dir` (``$ROBUSTMAXUP_CACHE`` or
            ``~/.cache/robustmaxup``).

    Returns:
        an :class:`~robustmaxup.data.splits.ImageSplit` (digits, CIFAR) or
        :class:`~robustmaxup.data.splits.FolderSplit` (ImageNet).

    Example::

        train = load_split("cifar10", "train", root="data/cifar10-jpeg.tar.gz")
        train.images.shape     # torch.Size([50000, 3, 32, 32]), uint8
    """
    spec = get_info(name)
    split = spec.resolve_split(split)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}"
                        f"{did_you_mean(split, SPLITS)}")
    for field, given in (("data_root", root), ("cache_dir", cache_dir)):
        if spec.bundled and given is not None:
            raise FieldError(field, f"is not used by {name} (bundled with the code); drop it")
    root_path = Path(root).expanduser() if root is not None else None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return spec.reader(spec, split, root_path, cache)
