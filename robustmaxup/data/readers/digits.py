"""digits: scikit-learn's bundled 1,797 8x8 images (no root, nothing downloaded)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from robustmaxup.data.spec import DatasetSpec
from robustmaxup.data.splits import ImageSplit

log = logging.getLogger(__name__)

__all__ = ["read_digits", "DIGITS_TEST_SIZE"]

DIGITS_TEST_SIZE = 360


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def read_digits(spec: DatasetSpec, split: str, root: Path | None, cache_dir: Path) -> ImageSplit:
    """scikit-learn's 1,797 8x8 digits; fixed stratified split 1,437 train / 360 test
    (``train_test_split(stratify=labels, random_state=0)``); pixels ``round(v * 255 / 16)``."""
    images, labels, train_idx, test_idx = digits_arrays()
    idx = train_idx if split == "train" else test_idx
    return ImageSplit(spec, split, torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),
                      [str(i) for i in range(10)], "sklearn.datasets.load_digits")
