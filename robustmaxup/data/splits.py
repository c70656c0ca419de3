"""The two split types, one interface (``len``, ``split[i]``, ``classes``, ``info``, ``labels``,
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

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from robustmaxup.data.spec import DatasetSpec
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError, check_class_indices, check_pixels

__all__ = ["ImageSplit", "FolderSplit", "Split", "Indices", "SPLITS", "as_index", "check_indices", "check_split",
           "folder_transform"]

Indices = Sequence[int] | torch.Tensor | np.ndarray

#: The split names every reader serves.
SPLITS = ("train", "test")


def as_index(indices: Indices) -> torch.Tensor:
    """``indices`` as a flat int64 CPU tensor."""
    return torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()


@dataclass(eq=False)
class ImageSplit:
    """A dataset split held whole in memory as uint8 pixels.

    Args:
        info: the dataset's :class:`~robustmaxup.data.spec.DatasetSpec` (shape, normalisation).
        split: ``"train"``, ``"test"`` or a derived name (``"train[val]"``).
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``, values in ``0..len(classes)-1``.
        classes: class names in label order.
        source: where the pixels came from (for provenance).

    ``split[i]`` gives ``(float32 [C, H, W] in [0, 1], int)``; ``split.batch(idx)`` gives
    ``(float32 [k, C, H, W], int64 [k])`` on the CPU.
    """

    info: DatasetSpec
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.is_floating_point() or self.labels.is_complex() or self.labels.dtype == torch.bool:
            raise FieldError("labels", f"must be integer class indices, got {self.labels.dtype} (a float "
                                       "label is not rounded)")
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise FieldError("labels", f"must be one per image: {self.images.shape[0]} images but labels of "
                                       f"shape {tuple(self.labels.shape)}")
        check_class_indices("labels", self.labels, self.info.num_classes)
        if len(self.classes) != self.info.num_classes or len(set(self.classes)) != len(self.classes):
            raise FieldError("classes", f"must be {self.info.num_classes} distinct names for {self.info.name}, "
                                        f"got {list(self.classes)[:12]!r}")

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor, info: DatasetSpec, *,
                     classes: Sequence[str] | None = None, split: str = "custom") -> "ImageSplit":
        """Your own images as a split, for the dataset runners (``certify_dataset``,
        ``evaluate_dataset``): uint8 ``[N, C, H, W]``, or floats in [0, 1] (rounded to uint8, as
        every split here is stored), of ``info``'s kind (e.g. ``get_info("cifar10")``); tensors or
        numpy arrays, labels one per image.

        Example::

            split = ImageSplit.from_tensors(x, y, get_info("cifar10"))   # x [N,3,32,32] in [0,1]
            rows = certify_dataset(smooth, split, range(len(split)), n=10_000)
        """
        if not isinstance(info, DatasetSpec):
            raise FieldError("info", f"must be a dataset's DatasetSpec, e.g. get_info({info!r}), got {info!r}")
        images = torch.as_tensor(images)
        if images.is_floating_point():
            check_pixels(images, "images")
            images = images.mul(255).round().to(torch.uint8)
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(info.image_shape):
            raise UserError(f"images must be [N, {', '.join(map(str, info.image_shape))}] for "
                            f"{info.name}, got {tuple(images.shape)}")
        labels = torch.as_tensor(labels).cpu()  # checked (integers, one per image, in range) on construction
        names = list(classes) if classes is not None else [str(i) for i in range(info.num_classes)]
        return cls(info, split, images.cpu().contiguous(), labels, names, source="tensors")

    @property
    def name(self) -> str:
        return self.info.name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])

    def batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``[k, C, H, W]`` in [0, 1] and int64 ``[k]`` for the given indices (CPU)."""
        idx = as_index(indices)
        return self.images[idx].float().div_(255), self.labels[idx].clone()

    def subset(self, indices: Indices, split: str | None = None) -> "ImageSplit":
        """The examples at ``indices`` (in that order), same classes and info."""
        idx = as_index(indices)
        return ImageSplit(self.info, split or self.split, self.images[idx], self.labels[idx],
                          list(self.classes), self.source)

    def __repr__(self) -> str:
        return (f"ImageSplit({self.name}/{self.split}: {len(self)} x "
                f"{tuple(self.images.shape[1:])}, {len(self.classes)} classes)")


@dataclass(eq=False)
class FolderSplit:
    """An ImageFolder split read lazily from disk (ImageNet-sized data).

    Args:
        info: the dataset's :class:`~robustmaxup.data.spec.DatasetSpec`.
        split: ``"train"`` or ``"test"``.
        samples: ``(path, label)`` pairs.
        classes: class (folder) names in label order.
        augment: True: RandomResizedCrop(224) + horizontal flip; False: Resize(256) +
            CenterCrop(224). Either ends in ToTensor (float32 [3, 224, 224] in [0, 1]).

    ``images`` is None; ``labels`` is an int64 ``[N]`` tensor. Random augmentations draw from
    torch's global RNG (seeded per worker by the DataLoader that
    :func:`~robustmaxup.data.make_loader` builds).
    """

    info: DatasetSpec
    split: str
    samples: list[tuple[str, int]]
    classes: list[str]
    augment: bool = False
    source: str = ""
    images: None = None
    labels: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.labels = torch.tensor([s[1] for s in self.samples], dtype=torch.int64)
        self._transform = folder_transform(self.augment, self.info.image_shape[1:])

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
        items = [self[int(i)] for i in as_index(indices)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def subset(self, indices: Indices, split: str | None = None,
               augment: bool | None = None) -> "FolderSplit":
        """The examples at ``indices``; ``augment`` overrides the transform if given."""
        samples = [self.samples[int(i)] for i in as_index(indices)]
        return FolderSplit(self.info, split or self.split, samples, list(self.classes),
                           self.augment if augment is None else augment, self.source)

    def __repr__(self) -> str:
        return (f"FolderSplit({self.name}/{self.split}: {len(self)} files, "
                f"{len(self.classes)} classes)")


Split = ImageSplit | FolderSplit


def check_indices(indices: Sequence[int], size: int) -> list[int]:
    """``indices`` as ints: FieldError unless there is at least one, each in ``[0, size)`` and
    none repeated (one row per example)."""
    idx = [int(i) for i in indices]
    if not idx:
        raise FieldError("indices", "must name at least one example")
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise FieldError("indices", f"must lie in [0, {size}) (the split's size), got {bad[0]}")
    if len(set(idx)) != len(idx):
        seen: set[int] = set()
        again = next(i for i in idx if i in seen or seen.add(i))
        raise FieldError("indices", f"must name each example once, got {again} twice")
    return idx


def check_split(split: Any) -> None:
    """UserError unless ``split`` is a split as the runners read it: ``len()``, ``.batch(indices)
    -> (x, y)`` and ``.info`` (a :class:`DatasetSpec`), as :func:`~robustmaxup.data.load_split`
    and :meth:`ImageSplit.from_tensors` make."""
    missing = [name for name in ("__len__", "batch", "info") if not hasattr(split, name)]
    if missing:
        raise UserError(f"split must be a robustmaxup split (data.load_split, or your tensors through "
                        f"ImageSplit.from_tensors); a {type(split).__name__} has no "
                        f"{', '.join(missing)}")


def folder_transform(augment: bool, size: tuple[int, int]) -> Callable[[Any], torch.Tensor]:
    """The torchvision transform of a :class:`FolderSplit`: RandomResizedCrop + flip when
    ``augment``, else Resize(size·256/224) + CenterCrop; then ToTensor."""
    from torchvision import transforms as T

    if augment:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    resize = int(round(size[0] * 256 / 224))
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor()])
