"""Datasets (offline only) and loaders.

Example::

    from robustmaxup.data import load_split, make_loader
    split = load_split("digits", "test")          # digits needs no root
    x, y = split[0]                               # float32 [1, 8, 8] in [0, 1], int
    loader = make_loader(split, batch_size=128, device="cpu", train=False, seed=0)
    for x, y in loader: ...                       # float32 [B, 1, 8, 8], int64 [B]

See :mod:`robustmaxup.data.datasets` for the accepted on-disk formats and
:mod:`robustmaxup.data.loaders` for ordering, sharding and augmentation.
"""

from robustmaxup.data.datasets import (
    READERS, FolderSplit, ImageSplit, Split, default_cache_dir, load_split, spread_indices,
    train_val_split,
)
from robustmaxup.data.info import DATASET_INFO, DatasetInfo, get_info
from robustmaxup.data.loaders import (
    AUGMENT_POLICIES, CropFlip, DeviceLoader, FolderLoader, crop_flip, epoch_indices, make_loader,
)

__all__ = [
    "DATASET_INFO", "DatasetInfo", "get_info",
    "READERS", "ImageSplit", "FolderSplit", "Split", "load_split", "spread_indices", "train_val_split",
    "default_cache_dir",
    "AUGMENT_POLICIES", "CropFlip", "crop_flip", "epoch_indices", "DeviceLoader", "FolderLoader",
    "make_loader",
]
