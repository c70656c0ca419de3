"""What one dataset is: the :class:`DatasetSpec` each entry of ``DATASETS`` carries.

Kept apart from the registry and the readers so that split objects can name their spec type
without importing any reading code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from robustmaxup.data.augment import CropFlip

__all__ = ["DatasetSpec", "DatasetInfo", "Reader"]

# A reader maps (spec, split, root, cache_dir) to a split object (an ImageSplit or FolderSplit
# of robustmaxup.data.splits, which builds on this module); ``split`` is "train" or "test".
Reader = Callable[["DatasetSpec", str, Optional[Path], Path], Any]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about one dataset, in one place.

    Attributes:
        name: registry name (``--dataset``).
        num_classes: number of labels.
        image_shape: ``(C, H, W)`` of the model input (ImageNet: the 224 centre crop).
        mean, std: per-channel normalisation on the [0, 1] pixel scale; models apply them inside.
        reader: ``reader(spec, split, root, cache_dir)`` -> the split (never downloads).
        augment: the on-device training augmentation of device-resident data (None: none).
        device_resident: small enough to keep whole on the training device.
        foreign_archs: architectures whose foreign-format checkpoints (Cohen et al.'s
            ``{'arch', 'state_dict'}`` files, which do not record a dataset) default to this one.
        split_aliases: other names accepted for a split, e.g. ImageNet's ``("val", "test")``.
        default_arch: the architecture a run trains when it names none (None: it must name one).
        bundled: shipped with a dependency (digits, in scikit-learn): it takes no root and no
            cache, and :func:`~robustmaxup.data.load_split` refuses either.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reader: Reader = field(repr=False)
    augment: CropFlip | None = None
    device_resident: bool = True
    foreign_archs: tuple[str, ...] = ()
    split_aliases: tuple[tuple[str, str], ...] = ()
    bundled: bool = False
    default_arch: str | None = None

    @property
    def in_channels(self) -> int:
        """Channels of the model input (``image_shape[0]``)."""
        return self.image_shape[0]

    def resolve_split(self, split: str) -> str:
        """``split`` with this dataset's aliases applied (``"val"`` -> ``"test"`` for ImageNet)."""
        return dict(self.split_aliases).get(split, split)


#: The name the loaders, splits and callers have always used for a dataset's facts.
DatasetInfo = DatasetSpec
