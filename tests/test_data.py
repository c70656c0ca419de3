"""Tests for robustmaxup.data: dataset formats, caching, splits and the loaders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from robustmaxup.data import (
    CropFlip, DeviceLoader, ImageSplit, crop_flip, epoch_indices, get_info, load_split,
    make_loader, train_val_split,
)
from robustmaxup.errors import UserError

# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_split_sizes_types_and_values():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.dtype == torch.uint8 and train.images.shape == (1437, 1, 8, 8)
    assert train.labels.dtype == torch.int64 and train.classes == [str(i) for i in range(10)]
    assert train.info == get_info("digits")
    # 0..16 scaled to 0..255 with rounding: only the 17 values round(v*255/16) occur.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(torch.cat([train.images, test.images])).tolist()) <= allowed
    assert int(train.images.max()) == 255
    # Together the two splits are exactly sklearn's data set (as a multiset of rows).
    from sklearn.datasets import load_digits

    d = load_digits()
    ref = np.rint(d.images * 255 / 16).astype(np.uint8).reshape(len(d.target), -1)
    ours = torch.cat([train.images, test.images]).reshape(1797, -1).numpy()
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(ours) == key(ref)
    # The normalisation constants in info describe these pixels.
    pix = torch.cat([train.images, test.images]).float() / 255
    assert abs(pix.mean().item() - train.info.mean[0]) < 1e-3
    assert abs(pix.std().item() - train.info.std[0]) < 1e-3


def test_digits_split_is_stratified_disjoint_and_deterministic():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    counts_train = torch.bincount(train.labels, minlength=10).double()
    counts_test = torch.bincount(test.labels, minlength=10).double()
    share = counts_test / (counts_train + counts_test)
    assert torch.all((share - 360 / 1797).abs() < 0.01)
    rows = lambda s: {bytes(r) for r in s.images.reshape(len(s), -1).numpy()}  # noqa: E731
    # sklearn digits has a handful of duplicate images; the splits are nearly disjoint as sets.
    assert len(rows(train) & rows(test)) < 5
    again = load_split("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_item_batch_and_subset():
    test = load_split("digits", "test")
    x, y = test[3]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)
    assert torch.equal(x, test.images[3].float() / 255) and y == int(test.labels[3])
    xb, yb = test.batch([5, 1, 5])
    assert xb.shape == (3, 1, 8, 8) and yb.dtype == torch.int64
    assert torch.equal(xb[1], test[1][0]) and yb.tolist() == [int(test.labels[i]) for i in (5, 1, 5)]
    sub = test.subset(torch.tensor([7, 2]))
    assert len(sub) == 2 and torch.equal(sub.images[0], test.images[7])
    assert sub.classes == test.classes and sub.info is test.info


def test_train_val_split_stratified_deterministic():
    train = load_split("digits", "train")
    a, va = train_val_split(train, 200, seed=1)
    b, vb = train_val_split(train, 200, seed=1)
    _, vc = train_val_split(train, 200, seed=2)
    assert (len(a), len(va)) == (1237, 200)
    assert torch.equal(va.images, vb.images) and not torch.equal(va.images, vc.images)
    assert torch.bincount(va.labels, minlength=10).tolist() == [20] * 10
    # Disjoint and covering: the multiset of (label, pixels) of both parts is the whole split.
    key = lambda s: sorted(  # noqa: E731
        (int(lab), bytes(r)) for lab, r in zip(s.labels, s.images.reshape(len(s), -1).numpy())
    )
    assert sorted(key(a) + key(va)) == key(train)
    with pytest.raises(UserError, match="validation size"):
        train_val_split(train, len(train), seed=0)


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_split("mnist", "train")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_split("digits", "dev")


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _toy_split(n: int = 50, name: str = "cifar10", hw: int = 6) -> ImageSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, hw, hw), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return ImageSplit(get_info(name), "train", images, labels, [str(i) for i in range(10)])


def _ids(loader) -> list[int]:
    """Recover each yielded example's index from its (unique) label-free pixel content."""
    lookup = {bytes(img.numpy()): i for i, img in enumerate(loader.split.images)}
    out = []
    for x, _ in loader:
        for row in (x * 255).round().to(torch.uint8):
            out.append(lookup[bytes(row.numpy())])
    return out


def test_eval_loader_returns_images_unchanged_in_order():
    split = _toy_split(23)
    loader = make_loader(split, 5, "cpu", train=False, seed=0)
    assert isinstance(loader, DeviceLoader) and len(loader) == 5
    xs, ys = zip(*loader)
    assert [len(x) for x in xs] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat(xs), split.images.float() / 255)
    assert torch.equal(torch.cat(ys), split.labels) and xs[0].dtype == torch.float32


def test_train_loader_permutation_covers_each_index_once_and_is_seeded():
    split = _toy_split(50)
    loader = make_loader(split, 8, "cpu", train=True, seed=3, drop_last=False)
    loader.augment = None  # identify examples by their pixels
    assert len(loader) == 7
    ids0 = _ids(loader)
    assert sorted(ids0) == list(range(50))
    assert ids0 != list(range(50))
    assert _ids(loader) == ids0  # same epoch -> same order
    loader.set_epoch(1)
    ids1 = _ids(loader)
    assert sorted(ids1) == list(range(50)) and ids1 != ids0
    other = make_loader(split, 8, "cpu", train=True, seed=3, drop_last=False, epoch=1)
    other.augment = None
    assert _ids(other) == ids1  # a fresh loader at epoch 1 (a resumed run) replays epoch 1
    # labels travel with their images
    for x, y in loader:
        assert y.dtype == torch.int64


def test_drop_last_default_follows_train():
    split = _toy_split(50)
    assert len(make_loader(split, 8, "cpu", train=True, seed=0)) == 6
    assert len(list(make_loader(split, 8, "cpu", train=True, seed=0))) == 6
    assert len(make_loader(split, 8, "cpu", train=False, seed=0)) == 7


@pytest.mark.parametrize("n,world", [(50, 4), (48, 3), (7, 2)])
def test_rank_shards_are_disjoint_equal_and_cover(n, world):
    shards = [epoch_indices(n, train=True, seed=5, epoch=2, rank=r, world_size=world)
              for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-n // world)
    flat = torch.cat(shards).tolist()
    assert set(flat) == set(range(n))
    assert len(flat) - len(set(flat)) == len(flat) - n  # only the wrap-around padding repeats
    perm = epoch_indices(n, train=True, seed=5, epoch=2)  # world_size 1: the permutation
    padded = torch.cat([perm, perm])[: len(flat)]
    for r in range(world):
        assert torch.equal(shards[r], padded[r::world])
    # eval shards: no padding, exact cover
    ev = [epoch_indices(n, train=False, seed=0, epoch=0, rank=r, world_size=world)
          for r in range(world)]
    assert sorted(torch.cat(ev).tolist()) == list(range(n))


def test_sharded_device_loaders_disjoint():
    split = _toy_split(40)
    seen = []
    for r in range(4):
        ld = make_loader(split, 5, "cpu", train=True, seed=1, rank=r, world_size=4)
        ld.augment = None
        assert len(ld) == 2
        seen.append(set(_ids(ld)))
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(seen, 2))
    assert set().union(*seen) == set(range(40))
    with pytest.raises(UserError, match="rank 4"):
        make_loader(split, 5, "cpu", train=True, seed=1, rank=4, world_size=4)


def _reference_crop_flip(img: torch.Tensor, pad: int, dy: int, dx: int, flip: bool):
    padded = torch.nn.functional.pad(img.float(), (pad, pad, pad, pad)).to(img.dtype)
    h, w = img.shape[-2:]
    out = padded[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (6, 3, 5, 7), generator=g, dtype=torch.uint8)
    dy = torch.tensor([0, 4, 2, 1, 3, 2])
    dx = torch.tensor([4, 0, 2, 3, 1, 0])
    fl = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(x, 2, dy, dx, fl)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for b in range(6):
        ref = _reference_crop_flip(x[b], 2, int(dy[b]), int(dx[b]), bool(fl[b]))
        assert torch.equal(out[b], ref), b
    assert torch.equal(out[2], x[2])  # centred, no flip: unchanged
    # dy=4, dx=0, flipped: content moves up 2 rows; the left pad columns end up on the right
    assert bool((out[1][:, 3:, :] == 0).all()) and bool((out[1][:, :, 5:] == 0).all())
    assert torch.equal(out[1][:, 0, 0], x[1][:, 2, 4])
    assert torch.equal(out[1][:, :3, :5], x[1][:, 2:, :5].flip(-1))


def _match_augmented(x_out: torch.Tensor, originals: torch.Tensor, pad: int, flips: bool):
    """All (index, dy, dx, flip) whose crop_flip of an original equals ``x_out`` exactly."""
    hits = []
    for i, dy, dx, fl in itertools.product(range(len(originals)), range(2 * pad + 1),
                                           range(2 * pad + 1), (False, True) if flips else (False,)):
        if torch.equal(_reference_crop_flip(originals[i], pad, dy, dx, fl), x_out):
            hits.append((i, dy, dx, fl))
    return hits


def test_train_batches_are_shifted_flipped_originals_and_vary():
    split = _toy_split(16, "cifar10", hw=8)
    loader = make_loader(split, 16, "cpu", train=True, seed=0)
    assert loader.augment == CropFlip(pad=4, flip=True)
    order = loader.indices()
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, split.labels[order])
    params = []
    for b in range(4):
        u8 = (x[b] * 255).round().to(torch.uint8)
        hits = _match_augmented(u8, split.images, 4, True)
        assert hits, f"batch row {b} is not a crop/flip of any original"
        assert hits[0][0] == int(order[b])  # and of the right one
        params.append(hits[0][1:])
    assert len(set(params)) > 1  # offsets/flips vary across samples
    # same epoch -> identical augmented batch; next epoch -> different
    assert torch.equal(next(iter(loader))[0], x)
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], x)


def test_digits_policy_shifts_by_one_and_never_flips():
    split = load_split("digits", "train").subset(range(64))
    loader = make_loader(split, 64, "cpu", train=True, seed=0)
    assert loader.augment == CropFlip(pad=1, flip=False)
    order = loader.indices()
    x, _ = next(iter(loader))
    assert x.shape == (64, 1, 8, 8)
    for b in range(6):
        u8 = (x[b] * 255).round().to(torch.uint8)
        orig = split.images[int(order[b])]
        ok = [(dy, dx) for dy in range(3) for dx in range(3)
              if torch.equal(_reference_crop_flip(orig, 1, dy, dx, False), u8)]
        assert ok, b


def test_crop_flip_statistics():
    """Offsets are uniform on 0..2*pad and flips are fair coins, drawn per sample."""
    n = 4000
    x = (1 + torch.arange(25, dtype=torch.uint8)).view(1, 1, 5, 5).repeat(n, 1, 1, 1)
    out = CropFlip(pad=2, flip=True)(x, torch.Generator().manual_seed(0))[:, 0]
    centre = out[:, 2, 2].long() - 1  # pixel (dy, dx) of the original, flip or not
    assert bool((centre >= 0).all())
    dy, dx = centre // 5, centre % 5
    flipped = out[:, 2, 1] > out[:, 2, 3]  # original columns increase left to right
    for v in (dy, dx):
        counts = torch.bincount(v, minlength=5).double()
        assert torch.all((counts - n / 5).abs() < 5 * (n * 0.2 * 0.8) ** 0.5), counts
    assert abs(flipped.double().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5
    # independent across the two axes: the 25 (dy, dx) cells are all populated
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25
