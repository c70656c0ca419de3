"""Datasets (offline only) and loaders.

Layout (one concern per module):

- :mod:`~robustmaxup.data.registry`: ``DATASETS``, one :class:`DatasetSpec` per dataset
  (classes, shape, normalisation, reader, training augmentation, ...), and :func:`load_split`;
- :mod:`~robustmaxup.data.readers`: one reader module per dataset family (digits, CIFAR,
  ImageNet), never downloading; :mod:`~robustmaxup.data.cache`: the decode-once npz cache;
- :mod:`~robustmaxup.data.splits`: :class:`ImageSplit`, :class:`FolderSplit`;
- :mod:`~robustmaxup.data.sampling`: fixed subsets, the validation hold-out, epoch order;
- :mod:`~robustmaxup.data.augment`: on-device crop + flip; :mod:`~robustmaxup.data.loaders`:
  the loaders.

Example::

    from robustmaxup.data import load_split, make_loader
    split = load_split("digits", "test")          # digits needs no root
    x, y = split[0]                               # float32 [1, 8, 8] in [0, 1], int
    loader = make_loader(split, batch_size=128, device="cpu", train=False, seed=0)
    for x, y in loader: ...                       # float32 [B, 1, 8, 8], int64 [B]
"""

from robustmaxup.data.augment import CropFlip, crop_flip
from robustmaxup.data.cache import default_cache_dir
from robustmaxup.data.loaders import DeviceLoader, FolderLoader, make_loader
from robustmaxup.data.registry import DATASETS, foreign_dataset, get_info, load_split, register_dataset
from robustmaxup.data.sampling import epoch_indices, select_indices, spread_indices, train_val_split
from robustmaxup.data.spec import DatasetInfo, DatasetSpec
from robustmaxup.data.splits import FolderSplit, ImageSplit, Split, check_indices, check_split

__all__ = [
    "DATASETS", "DatasetSpec", "DatasetInfo", "get_info", "register_dataset", "foreign_dataset",
    "ImageSplit", "FolderSplit", "Split", "check_indices", "check_split", "load_split", "spread_indices", "select_indices", "train_val_split",
    "default_cache_dir",
    "CropFlip", "crop_flip", "epoch_indices", "DeviceLoader", "FolderLoader", "make_loader",
]
