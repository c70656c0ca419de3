"""Which examples, in which order: fixed evaluation subsets, the stratified validation hold-out,
and each epoch's (sharded) order.

Example::

    from robustmaxup.data import load_split, spread_indices, train_val_split
    train, val = train_val_split(load_split("digits", "train"), val_size=200, seed=0)
    spread_indices(10, 4).tolist()        # [0, 2, 5, 7]
"""

from __future__ import annotations

import math

import torch

from robustmaxup.data.splits import FolderSplit, Split
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError, check_int
from robustmaxup.runtime.seeds import stream_seed

__all__ = ["spread_indices", "select_indices", "train_val_split", "stratified_pick", "epoch_indices"]


def spread_indices(n: int, k: int) -> torch.Tensor:
    """``min(k, n)`` evenly spaced indices of ``range(n)`` (all of them when ``k >= n``): a fixed
    subset that covers every class even when a split is sorted by class, as ImageFolder data is.

    Example::

        >>> spread_indices(10, 4).tolist()
        [0, 2, 5, 7]
    """
    check_int("n", n, minimum=0)
    k = min(check_int("k", k, minimum=0), n)
    return torch.div(torch.arange(k) * n, k, rounding_mode="floor")


def check_max_images(max_images: int) -> int:
    """``max_images`` as an int: -1 (all) or at least 1, else FieldError."""
    if max_images != -1 and check_int("max_images", max_images) < 1:
        raise FieldError("max_images", f"must be -1 (all images) or an integer >= 1, got {max_images}")
    return int(max_images)


def select_indices(size: int, skip: int, max_images: int = -1) -> list[int]:
    """The evaluation subset of a ``size``-image split: every ``skip``-th index, then, if
    ``max_images`` (> 0) is smaller, that many of them spread evenly over the whole range.

    ``max_images`` counts images, unlike Cohen et al.'s ``certify.py``, where ``--max`` is an
    index bound (``i >= max`` stops): on a class-sorted split (an ImageFolder tree, as the
    shared CIFAR-10 tarball) an index bound keeps one or two classes; the spread keeps all.

    Example::

        >>> select_indices(360, 45, 6)
        [0, 45, 90, 180, 225, 270]
    """
    check_int("skip", skip, minimum=1)
    check_max_images(max_images)
    idx = list(range(0, check_int("size", size, minimum=0), skip))
    if max_images == -1 or max_images >= len(idx):
        return idx
    return [idx[i] for i in spread_indices(len(idx), max_images).tolist()]


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
    val_idx = stratified_pick(split.labels, val_size, seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[val_idx] = True
    train_idx = torch.nonzero(~mask).flatten()
    if isinstance(split, FolderSplit):
        val = split.subset(val_idx, split=f"{split.split}[val]", augment=False)
    else:
        val = split.subset(val_idx, split=f"{split.split}[val]")
    return split.subset(train_idx, split=f"{split.split}[-val]"), val


def stratified_pick(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
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


def epoch_indices(n: int, *, train: bool, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's example indices for one epoch (int64 ``[m]``, CPU).

    ``train=True``: a permutation of ``range(n)`` from a CPU generator seeded with
    ``stream_seed(seed, "data.order", epoch)`` (the same on every rank and device), padded by wrapping around
    to a multiple of ``world_size`` and dealt out as ``perm[rank::world_size]``, so every rank
    gets ``ceil(n / world_size)`` indices, as ``DistributedSampler`` does.
    ``train=False``: the natural order, ``range(n)[rank::world_size]`` without padding, so the
    ranks together see every example exactly once.
    """
    if not train:
        return torch.arange(rank, n, world_size)
    g = torch.Generator().manual_seed(stream_seed(seed, "data.order", epoch))
    perm = torch.randperm(n, generator=g)
    total = math.ceil(n / world_size) * world_size
    if total > n:  # wrap around as often as needed: with world_size > 2n once is not enough
        perm = perm.repeat(math.ceil(total / n))[:total]
    return perm[rank::world_size]
