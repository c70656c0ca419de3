"""ImageNet: ImageFolder ``train/<wnid>/*`` and ``val/<wnid>/*``, read lazily."""

from __future__ import annotations

import logging
from pathlib import Path

from robustmaxup.data.readers.common import need_root
from robustmaxup.data.spec import DatasetSpec
from robustmaxup.data.splits import FolderSplit
from robustmaxup.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["read_imagenet"]


def read_imagenet(spec: DatasetSpec, split: str, root: Path | None,
                  cache_dir: Path) -> FolderSplit:
    """``root/train/<wnid>/*`` and ``root/val/<wnid>/*`` (split "test" reads ``val/``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = need_root(root, spec, "a folder with train/ and val/ class folders")
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
    if len(classes) != spec.num_classes:
        log.warning("%s has %d classes, ImageNet has %d", folder, len(classes), spec.num_classes)
    return FolderSplit(spec, split, [(p, int(t)) for p, t in samples], classes,
                       augment=split == "train", source=str(folder))
