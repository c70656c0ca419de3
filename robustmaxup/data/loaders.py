"""Batches for training and evaluation.

- :class:`DeviceLoader` (digits, CIFAR): the whole uint8 split is copied to the device once;
  each epoch's order comes from a generator seeded with ``(seed, epoch)``, is sharded across
  ranks (:func:`~robustmaxup.data.sampling.epoch_indices`), and training batches are
  random-cropped (zero, reflect or grey padding) and flipped on the device, vectorised
  (:class:`~robustmaxup.data.augment.CropFlip`, the dataset's ``spec.augment``), before
  conversion to float32 in [0, 1].
- :class:`FolderLoader` (ImageNet): a thin wrapper over ``torch.utils.data.DataLoader`` with the
  same ordering and sharding rule, yielding device tensors; its random crops are seeded from
  ``(seed, epoch, rank)`` whether they run in worker processes or (``num_workers=0``) here.

Both have ``set_epoch(epoch)`` and ``len(loader)`` = number of batches, and yield
``(x float32 [B, C, H, W] on device in [0, 1], y int64 [B] on device)``.

Example::

    from robustmaxup.data import load_split, make_loader
    train = load_split("digits", "train")
    loader = make_loader(train, batch_size=64, device="cpu", train=True, seed=0)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader:
            ...
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from robustmaxup.data.augment import CropFlip
from robustmaxup.data.sampling import epoch_indices
from robustmaxup.data.splits import FolderSplit, ImageSplit, Split
from robustmaxup.errors import UserError
from robustmaxup.runtime.seeds import stream_generator, stream_seed

__all__ = ["DeviceLoader", "FolderLoader", "make_loader"]

Batch = tuple[torch.Tensor, torch.Tensor]


class _EpochLoader:
    """What both loaders share: arguments, ``set_epoch``, this rank's order, ``len``."""

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *,
                 train: bool, seed: int, rank: int, world_size: int, drop_last: bool | None,
                 epoch: int) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} must be in 0..{world_size - 1} (world size {world_size})")
        self.split = split
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration replays."""
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's example order for the current epoch (int64, CPU), before batching."""
        return epoch_indices(len(self.split), train=self.train, seed=self.seed,
                             epoch=self.epoch, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        n, ws = len(self.split), self.world_size
        m = math.ceil(n / ws) if self.train else len(range(self.rank, n, ws))
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)


class DeviceLoader(_EpochLoader):
    """Batches of a device-resident :class:`ImageSplit`.

    Args:
        split: the data; its uint8 images are copied to ``device`` once, here.
        batch_size: examples per batch (per rank).
        device: where batches live.
        train: shuffle per epoch (and pad shards to equal length, see :func:`epoch_indices`).
        seed: with the epoch, fixes the order and the augmentation draws.
        rank, world_size: data-parallel sharding (see :func:`epoch_indices`).
        drop_last: drop a final short batch (default: ``train``).
        augment: None: same as ``train``; True: the dataset's policy (``split.info.augment``,
            none if it has none); False: no augmentation; a :class:`CropFlip`: that one.
        epoch: the starting epoch (see :meth:`set_epoch`).

    Augmentation draws come from a generator on ``device`` seeded with
    ``stream_seed(seed, "data.augment", epoch, rank)``, so an epoch replays exactly after a resume.
    """

    def __init__(self, split: ImageSplit, batch_size: int, device: torch.device | str, *,
                 train: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, augment: bool | CropFlip | None = None,
                 epoch: int = 0) -> None:
        super().__init__(split, batch_size, device, train=train, seed=seed, rank=rank,
                         world_size=world_size, drop_last=drop_last, epoch=epoch)
        if augment is None:
            augment = train
        if augment is True:
            augment = split.info.augment
        self.augment: CropFlip | None = augment or None
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        order = self.indices().to(self.device)
        gen = None
        if self.augment is not None:
            gen = stream_generator(self.seed, "data.augment", self.epoch, self.rank, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x.float().div_(255), self.labels[idx]


class FolderLoader(_EpochLoader):
    """Batches of a :class:`FolderSplit` through ``torch.utils.data.DataLoader`` workers.

    Same arguments, ordering and sharding as :class:`DeviceLoader` (:func:`epoch_indices`: what
    ``DistributedSampler`` gives when training), plus ``num_workers``; pinned memory on CUDA.
    ``augment`` (default ``train``) picks RandomResizedCrop + flip or Resize + CenterCrop. The
    random crops are seeded from ``(seed, epoch, rank)``, in the workers or, with
    ``num_workers=0``, in a private RNG stream that leaves the global one alone.
    Yields float32 ``[B, 3, 224, 224]`` and int64 ``[B]`` on ``device``.
    """

    def __init__(self, split: FolderSplit, batch_size: int, device: torch.device | str, *,
                 train: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, augment: bool | None = None,
                 num_workers: int = 4, epoch: int = 0) -> None:
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        augment = train if augment is None else augment
        if augment != split.augment:  # same files, the other transform
            split = split.subset(range(len(split)), augment=augment)
        super().__init__(split, batch_size, device, train=train, seed=seed, rank=rank,
                         world_size=world_size, drop_last=drop_last, epoch=epoch)
        self.num_workers = num_workers

    def __iter__(self) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        seed = stream_seed(self.seed, "data.augment", self.epoch, self.rank)
        loader = DataLoader(
            self.split, batch_size=self.batch_size, sampler=self.indices().tolist(),
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last, generator=torch.Generator().manual_seed(seed),
        )
        batches = iter(loader)
        if self.num_workers == 0:  # transforms run here, on the global RNG: give them our own
            batches = _with_rng_state(batches, torch.Generator().manual_seed(seed).get_state())
        for x, y in batches:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _with_rng_state(items: Iterator[Batch], state: torch.Tensor) -> Iterator[Batch]:
    """Produce each item under a private CPU RNG stream starting at ``state``; the caller's
    global RNG is untouched in between (so its own random draws don't shift the crops)."""
    while True:
        saved = torch.get_rng_state()
        torch.set_rng_state(state)
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            state = torch.get_rng_state()
            torch.set_rng_state(saved)
        yield item


def make_loader(split: Split, batch_size: int, device: torch.device | str, *, train: bool,
                seed: int, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
                augment: bool | None = None, num_workers: int = 4,
                epoch: int = 0) -> DeviceLoader | FolderLoader:
    """A loader for ``split``: :class:`DeviceLoader` for in-memory splits, :class:`FolderLoader`
    for folder-backed ones (``num_workers`` applies to the latter only).

    Args:
        split: from :func:`~robustmaxup.data.load_split` (or a subset of one).
        batch_size: examples per batch on this rank.
        device: where ``x`` and ``y`` are delivered.
        train: shuffle each epoch (seeded by ``(seed, epoch)``), shards padded to equal length
            (as ``DistributedSampler``); False: natural order, exact cover, no padding.
        seed: run seed.
        rank, world_size: data-parallel shard of this process.
        drop_last: drop a final short batch; default ``train``.
        augment: training augmentation (CIFAR: 4-px crop + flip; digits: 1-px crop; ImageNet:
            RandomResizedCrop + flip); default ``train``. Pass ``train=True, augment=False``
            for shuffled, unaugmented training.
        num_workers: DataLoader worker processes (ImageNet).
        epoch: first epoch; call ``loader.set_epoch(e)`` before each epoch.

    Example::

        loader = make_loader(load_split("digits", "test"), 128, "cpu", train=False, seed=0)
        x, y = next(iter(loader))     # float32 [128, 1, 8, 8], int64 [128]
    """
    common = dict(train=train, seed=seed, rank=rank, world_size=world_size,
                  drop_last=drop_last, augment=augment, epoch=epoch)
    if isinstance(split, FolderSplit):
        return FolderLoader(split, batch_size, device, num_workers=num_workers, **common)
    return DeviceLoader(split, batch_size, device, **common)
