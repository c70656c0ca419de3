"""Static facts about each dataset: classes, image shape, normalisation.

Kept apart from the loaders so that ``models`` and ``checkpoints`` can read normalisation
constants without importing any loading code.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustmaxup.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on this dataset must agree with.

    ``image_shape`` is ``(C, H, W)`` of the model input (ImageNet: the 224 centre crop).
    ``mean``/``std`` are per-channel, on the [0, 1] pixel scale; models apply them inside.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device_resident: bool = True  # small enough to keep whole on the training device


DATASET_INFO: Registry[DatasetInfo] = Registry("dataset")


def _add(info: DatasetInfo) -> None:
    DATASET_INFO.register(info.name)(info)


# Digits: scikit-learn's bundled 8x8 images; mean/std of its pixels on the [0, 1] scale.
_add(DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3760,)))
# CIFAR-10 constants as in Cohen et al.'s released code, so their checkpoints load unchanged.
_add(DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
_add(DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
_add(
    DatasetInfo(
        "imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        device_resident=False,
    )
)


def get_info(name: str) -> DatasetInfo:
    return DATASET_INFO.get(name)
