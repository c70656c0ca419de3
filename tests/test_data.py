"""Tests for robustmaxup.data: dataset formats, caching, splits and the loaders."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import pytest
import torch

from robustmaxup.data import (
    DATASETS, CropFlip, DatasetSpec, DeviceLoader, ImageSplit, crop_flip, epoch_indices, get_info,
    load_split, make_loader, train_val_split,
)
from robustmaxup.errors import UserError
from robustmaxup.runtime.seeds import STREAMS, stream_seed
from robustmaxup.train import TrainConfig
from robustmaxup.train.state import load_splits

from tests.fakes import KilledAt


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never write to the user's real cache directory."""
    monkeypatch.setenv("ROBUSTMAXUP_CACHE", str(tmp_path / "default-cache"))


# --------------------------------------------------------------------------------------------
# The dataset registry: one complete, consistent entry per dataset
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_spec_is_complete_and_consistent(name):
    spec = DATASETS.get(name)
    assert isinstance(spec, DatasetSpec) and spec.name == name and get_info(name) is spec
    assert isinstance(spec.num_classes, int) and spec.num_classes >= 2
    assert len(spec.image_shape) == 3 and all(isinstance(d, int) and d > 0 for d in spec.image_shape)
    channels = spec.image_shape[0]
    assert spec.in_channels == channels
    assert len(spec.mean) == len(spec.std) == channels
    assert all(0.0 <= m <= 1.0 for m in spec.mean) and all(0.0 < v <= 1.0 for v in spec.std)
    assert callable(spec.reader)
    assert spec.augment is None or isinstance(spec.augment, CropFlip)
    assert isinstance(spec.device_resident, bool)
    assert spec.device_resident or spec.augment is None, "the crop policy runs on device-resident data"
    assert all(isinstance(a, str) and a for a in spec.foreign_archs)
    assert spec.resolve_split("train") == "train" and spec.resolve_split("test") == "test"
    assert all(dst in ("train", "test") for _, dst in spec.split_aliases)
    hash(spec)  # frozen and hashable: safe to share between splits


def test_foreign_architectures_are_claimed_at_most_once():
    claims = [a for name in DATASETS for a in DATASETS.get(name).foreign_archs]
    assert len(claims) == len(set(claims)), claims
    assert "resnet50" in get_info("imagenet").foreign_archs
    assert "cifar_resnet110" in get_info("cifar10").foreign_archs


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_reader_loads_or_names_the_missing_root(name, tmp_path):
    """digits is bundled and loads through its reader; every other dataset needs a root and says
    so in one UserError (nothing is downloaded)."""
    spec = DATASETS.get(name)
    if name != "digits":
        with pytest.raises(UserError, match=r"needs a data root \(data_root\)"):
            spec.reader(spec, "train", None, tmp_path)
        return
    for split in ("train", "test"):
        s = spec.reader(spec, split, None, tmp_path)
        assert s.info is spec and s.split == split and len(s) > 0
        assert tuple(s.images.shape[1:]) == spec.image_shape
        assert len(s.classes) == spec.num_classes and int(s.labels.max()) < spec.num_classes
    assert not list(tmp_path.iterdir()), "digits needs no cache"


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if DATASETS.get(n).device_resident])
def test_training_loader_uses_the_dataset_policy(name):
    spec = get_info(name)
    images = torch.zeros((4, *spec.image_shape), dtype=torch.uint8)
    split = ImageSplit(spec, "train", images, torch.arange(4) % spec.num_classes,
                       [str(i) for i in range(spec.num_classes)])
    assert make_loader(split, 2, "cpu", train=True, seed=0).augment == spec.augment
    assert make_loader(split, 2, "cpu", train=False, seed=0).augment is None


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
    assert torch.equal(xb[1], test[1][0])
    assert yb.tolist() == [int(test.labels[i]) for i in (5, 1, 5)]
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


def test_augment_flag_is_independent_of_shuffling():
    split = _toy_split(20)
    plain = make_loader(split, 20, "cpu", train=True, seed=0, augment=False)
    assert plain.augment is None
    assert sorted(_ids(plain)) == list(range(20)) and _ids(plain) != list(range(20))
    ordered = make_loader(split, 20, "cpu", train=False, seed=0, augment=True)
    assert ordered.augment == CropFlip(4, True)
    x, y = next(iter(ordered))
    assert torch.equal(y, split.labels) and not torch.equal(x, split.images.float() / 255)
    custom = DeviceLoader(split, 4, "cpu", train=True, seed=0, augment=CropFlip(1, False))
    assert custom.augment == CropFlip(1, False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_loader_on_cuda_matches_cpu_order_and_is_seeded():
    split = _toy_split(64, hw=8)
    cpu = make_loader(split, 16, "cpu", train=True, seed=4, augment=False)
    gpu = make_loader(split, 16, "cuda", train=True, seed=4)
    assert gpu.images.is_cuda
    batches = list(gpu)
    assert all(x.is_cuda and y.is_cuda and x.dtype == torch.float32 for x, y in batches)
    # same permutation on both devices (it is drawn on the CPU)
    assert torch.equal(torch.cat([y for _, y in batches]).cpu(), torch.cat([y for _, y in cpu]))
    again = list(gpu)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    u8 = (batches[0][0][0].cpu() * 255).round().to(torch.uint8)
    hits = _match_augmented(u8, split.images, 4, True)
    assert hits and hits[0][0] == int(gpu.indices()[0])


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


@pytest.mark.parametrize("padding, np_mode, fill", [("zeros", "constant", 0), ("reflect", "reflect", None),
                                                   ("grey", "constant", 128)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_paddings_match_numpy_pad_then_crop(padding, np_mode, fill, dtype):
    """Every offset and flip of a 5x7 image padded by 3, against numpy's pad (the references'
    ``np.pad(..., mode='reflect')`` and torchvision's ``fill=128`` on uint8 / 128/255 on floats)."""
    import numpy as np

    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (1, 2, 5, 7), generator=g, dtype=torch.uint8)
    x = x if dtype == torch.uint8 else x.float() / 255
    pad, (h, w) = 3, x.shape[-2:]
    kw = {} if fill is None else {"constant_values": fill if dtype == torch.uint8 else fill / 255}
    padded = torch.from_numpy(np.pad(x[0].numpy(), [(0, 0), (pad, pad), (pad, pad)], mode=np_mode, **kw))
    for dy, dx, fl in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        out = crop_flip(x, pad, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([fl]), padding)
        ref = padded[:, dy:dy + h, dx:dx + w]
        assert torch.equal(out[0], ref.flip(-1) if fl else ref), (dy, dx, fl)


def _match_augmented(x_out: torch.Tensor, originals: torch.Tensor, pad: int, flips: bool):
    """All (index, dy, dx, flip) whose crop_flip of an original equals ``x_out`` exactly."""
    hits = []
    shifts = range(2 * pad + 1)
    flip_options = (False, True) if flips else (False,)
    for i, dy, dx, fl in itertools.product(range(len(originals)), shifts, shifts, flip_options):
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


# --------------------------------------------------------------------------------------------
# CIFAR formats (tiny fakes)
# --------------------------------------------------------------------------------------------

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _rand_u8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write_tree(root, classes, per_class=2, size=32, seed=0, ext="png"):
    """root/{train,test}/<class>/<i>.png with random pixels; returns {split: (images, labels)}
    in the expected order (class, then file name)."""
    from PIL import Image

    out = {}
    for s_i, split in enumerate(("train", "test")):
        imgs, labels = [], []
        for k, cls in enumerate(sorted(classes)):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(per_class):
                arr = _rand_u8((size, size, 3), seed + 1000 * s_i + 10 * k + j)
                Image.fromarray(arr).save(d / f"{j:03d}.{ext}")
                imgs.append(arr.transpose(2, 0, 1))
                labels.append(k)
        out[split] = (np.stack(imgs), np.array(labels))
    return out


def _write_python_cifar(folder, files, label_key, meta_file, meta_key, classes, n=3):
    """A torchvision python-format folder; returns {split: (images, labels)}."""
    import pickle

    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for i, (split, name) in enumerate(files):
        data = _rand_u8((n, 3072), 100 + i)
        labels = [(i + j) % len(classes) for j in range(n)]
        batch = {b"batch_label": name.encode(), b"data": data, label_key: labels,
                 b"coarse_labels": [0] * n, b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[split][0].append(data.reshape(n, 3, 32, 32))
        out[split][1].extend(labels)
    meta = {meta_key: [c.encode() for c in classes]}
    (folder / meta_file).write_bytes(pickle.dumps(meta, protocol=2))
    return {s: (np.concatenate(v[0]), np.array(v[1])) for s, v in out.items()}


CIFAR10_PY = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]


@pytest.fixture
def cifar10_py(tmp_path):
    ref = _write_python_cifar(tmp_path / "cifar-10-batches-py", CIFAR10_PY, b"labels",
                              "batches.meta", b"label_names", CIFAR10)
    return tmp_path, ref


def _check(split, images, labels, classes):
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert split.images.shape == images.shape
    assert np.array_equal(split.images.numpy(), images)
    assert split.labels.tolist() == labels.tolist()
    assert split.classes == classes


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10_python_format_parent_or_folder(cifar10_py, sub, tmp_path):
    root, ref = cifar10_py
    for split in ("train", "test"):
        s = load_split("cifar10", split, root=root / sub if sub else root, cache_dir=tmp_path / "c")
        _check(s, *ref[split], CIFAR10)
    assert len(load_split("cifar10", "train", root=root, cache_dir=tmp_path / "c")) == 15
    assert not (tmp_path / "c").exists()  # folders are read directly, nothing cached


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    classes = [f"c{i:03d}" for i in range(100)]
    ref = _write_python_cifar(tmp_path / "cifar-100-python", [("train", "train"), ("test", "test")],
                              b"fine_labels", "meta", b"fine_label_names", classes, n=5)
    s = load_split("cifar100", "train", root=tmp_path)
    _check(s, *ref["train"], classes)
    assert s.labels.tolist() != [0] * 5  # not the coarse labels
    assert s.info.num_classes == 100
    # a CIFAR-10 root is not taken for CIFAR-100
    with pytest.raises(UserError, match="no CIFAR-10 found"):
        load_split("cifar10", "train", root=tmp_path)


def test_cifar10_image_folder_png_round_trip(tmp_path):
    ref = _write_tree(tmp_path / "data", CIFAR10)
    for split in ("train", "test"):
        s = load_split("cifar10", split, root=tmp_path / "data")
        _check(s, *ref[split], CIFAR10)
        x, y = s[3]
        assert x.shape == (3, 32, 32) and torch.equal(x, torch.from_numpy(ref[split][0][3]) / 255)


def test_image_folder_cached_and_invalidated_by_changes(tmp_path, monkeypatch):
    from PIL import Image

    import robustmaxup.data.readers.cifar as ds

    ref = _write_tree(tmp_path / "data", CIFAR10, per_class=1)
    cache = tmp_path / "cache"
    _check(load_split("cifar10", "test", root=tmp_path / "data", cache_dir=cache), *ref["test"],
           CIFAR10)
    assert len(list(cache.glob("cifar10-data-*.npz"))) == 1
    real = ds._decode_image
    monkeypatch.setattr(ds, "_decode_image", lambda *a: pytest.fail("decoded again"))
    _check(load_split("cifar10", "train", root=tmp_path / "data", cache_dir=cache),
           *ref["train"], CIFAR10)
    # rewriting one image changes the key: decoded afresh, new pixels seen
    monkeypatch.setattr(ds, "_decode_image", real)
    new = _rand_u8((32, 32, 3), 999)
    changed = tmp_path / "data" / "test" / "cat" / "000.png"
    Image.fromarray(new).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    s = load_split("cifar10", "test", root=tmp_path / "data", cache_dir=cache)
    assert np.array_equal(s.images[3].numpy(), new.transpose(2, 0, 1))
    assert len(list(cache.glob("cifar10-data-*.npz"))) == 2


def test_cifar10_wrong_class_folders(tmp_path):
    _write_tree(tmp_path, CIFAR10[:9] + ["zebra"], per_class=1)
    with pytest.raises(UserError, match="not CIFAR-10's classes"):
        load_split("cifar10", "train", root=tmp_path)


def test_image_folder_wrong_size(tmp_path):
    _write_tree(tmp_path, CIFAR10, per_class=1, size=30)
    with pytest.raises(UserError, match="expected 32x32"):
        load_split("cifar10", "test", root=tmp_path)


def _make_tar(src, dest, arcname):
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dest


@pytest.mark.parametrize("top", ["cifar10-images", "."])
def test_tarball_decoded_once_then_cached(tmp_path, monkeypatch, top):
    import tarfile

    ref = _write_tree(tmp_path / "tree", CIFAR10)
    tar = _make_tar(tmp_path / "tree", tmp_path / "c10.tar.gz", top)
    cache = tmp_path / "cache"
    s = load_split("cifar10", "train", root=tar, cache_dir=cache)
    _check(s, *ref["train"], CIFAR10)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    mtime = files[0].stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("tarball opened although cached")

    monkeypatch.setattr(tarfile, "open", boom)
    for split in ("train", "test"):
        _check(load_split("cifar10", split, root=tar, cache_dir=cache), *ref[split], CIFAR10)
    assert [f.name for f in cache.iterdir()] == [files[0].name]
    assert files[0].stat().st_mtime_ns == mtime


def test_tarball_cache_default_dir_from_env(tmp_path, monkeypatch):
    _write_tree(tmp_path / "tree", CIFAR10, per_class=1)
    tar = _make_tar(tmp_path / "tree", tmp_path / "c10.tgz", "x")
    monkeypatch.setenv("ROBUSTMAXUP_CACHE", str(tmp_path / "envcache"))
    assert len(load_split("cifar10", "test", root=tar)) == 10
    assert len(list((tmp_path / "envcache").glob("cifar10-c10-*.npz"))) == 1


def test_killed_decode_leaves_no_cache(tmp_path, monkeypatch):
    import robustmaxup.data.readers.cifar as ds

    _write_tree(tmp_path / "tree", CIFAR10, per_class=1)
    tar = _make_tar(tmp_path / "tree", tmp_path / "c10.tar.gz", "t")
    killed = KilledAt(monkeypatch, ds, "_decode_image", at=15)
    with pytest.raises(KeyboardInterrupt):
        load_split("cifar10", "train", root=tar, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no temp file
    killed.disarm()
    assert len(load_split("cifar10", "train", root=tar, cache_dir=tmp_path / "cache")) == 10


def test_tarball_of_python_format(cifar10_py, tmp_path):
    root, ref = cifar10_py
    tar = _make_tar(root / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz",
                    "cifar-10-batches-py")
    s = load_split("cifar10", "test", root=tar, cache_dir=tmp_path / "cache")
    _check(s, *ref["test"], CIFAR10)


def test_missing_root_names_the_path(tmp_path):
    where = tmp_path / "nowhere"
    expected = f"no CIFAR-10 found at {where}: expected cifar-10-batches-py/"
    with pytest.raises(UserError, match=expected):
        load_split("cifar10", "train", root=where)
    with pytest.raises(UserError, match="cifar100 needs a data root"):
        load_split("cifar100", "train")
    with pytest.raises(UserError, match="no ImageNet found at"):
        load_split("imagenet", "test", root=where)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="cannot read archive"):
        load_split("cifar10", "train", root=bad, cache_dir=tmp_path / "c")


def test_hostile_pickle_is_refused(cifar10_py):
    import pickle

    root, _ = cifar10_py

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="unexpected object"):
        load_split("cifar10", "test", root=root)


# --------------------------------------------------------------------------------------------
# ImageNet (folder-backed)
# --------------------------------------------------------------------------------------------


def test_imagenet_folder_split_and_loader(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for k, wnid in enumerate(["n01440764", "n01443537"]):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(_rand_u8((40, 40, 3), 10 * k + j)).save(d / f"{j}.JPEG")
    train = load_split("imagenet", "train", root=tmp_path)
    val = load_split("imagenet", "test", root=tmp_path)
    assert train.images is None and len(train) == 4 and train.classes == ["n01440764", "n01443537"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert len(load_split("imagenet", "val", root=tmp_path)) == 4
    x, y = val[2]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xb, yb = val.batch([0, 3])
    assert xb.shape == (2, 3, 224, 224) and yb.tolist() == [0, 1]
    # eval transform is deterministic; training crops are random
    assert torch.equal(val[0][0], val[0][0])
    loader = make_loader(train, 3, "cpu", train=True, seed=0, num_workers=0, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert batches[0][0].shape == (3, 3, 224, 224) and batches[0][1].dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 0, 1, 1]
    # same (seed, epoch) -> same crops, whatever the global RNG does meanwhile
    torch.manual_seed(123)
    again = [(x, torch.rand(1)) for x, _ in loader]
    assert torch.equal(again[0][0], batches[0][0]) and torch.equal(again[1][0], batches[1][0])
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])
    worker = make_loader(train, 3, "cpu", train=True, seed=0, num_workers=1, drop_last=False)
    w1, w2 = next(iter(worker))[0], next(iter(worker))[0]
    assert w1.shape == (3, 3, 224, 224) and torch.equal(w1, w2)
    # train=False over the training files: the deterministic evaluation transform
    ev = make_loader(train, 4, "cpu", train=False, seed=0, num_workers=0)
    assert torch.equal(next(iter(ev))[0][1], train.subset([1], augment=False)[0][0])
    shards = [make_loader(train, 1, "cpu", train=True, seed=0, rank=r, world_size=2, num_workers=0)
              for r in range(2)]
    assert [len(sh) for sh in shards] == [2, 2]
    assert sorted(int(y) for sh in shards for _, y in sh) == [0, 0, 1, 1]
    tr, va = train_val_split(train, 2, seed=0)
    assert len(tr) == len(va) == 2 and va.augment is False and tr.augment is True
    assert sorted(va.labels.tolist()) == [0, 1]


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
def _rows(split):
    return Counter(bytes(r) for r in split.images.reshape(len(split), -1).numpy())


def test_validation_is_held_out_from_the_training_split(tmp_path):  # kills M3, M4
    cfg = TrainConfig(dataset="digits", out=str(tmp_path / "r"), val_size=100, max_eval=30)
    s = load_splits(cfg)
    full = load_split("digits", "train")
    assert len(s["val"]) == 100 and len(s["train"]) == len(full) - 100
    assert _rows(s["train"]) + _rows(s["val"]) == _rows(full)  # val from train, disjoint, covering
    # drawn from its own named stream, not another stream's seed
    _, want = train_val_split(full, 100, stream_seed(cfg.seed, "train.val_split"))
    assert torch.equal(s["val"].images, want.images) and torch.equal(s["val"].labels, want.labels)


def test_every_named_stream_has_its_own_seed():  # kills M33
    for seed in (0, 1):
        assert len({stream_seed(seed, name) for name in STREAMS}) == len(STREAMS)
        assert len({stream_seed(seed, name, 3) for name in STREAMS}) == len(STREAMS)


def test_augmentation_draws_change_with_the_epoch():  # kills M11
    split = load_split("digits", "train")
    same = split.subset([5] * 64)  # 64 copies of one image: order cannot matter, only the draws
    loader = make_loader(same, 64, "cpu", train=True, seed=0, augment=True)
    assert loader.augment is not None
    loader.set_epoch(0)
    a = next(iter(loader))[0]
    assert not torch.equal(a, same.batch(range(64))[0])  # augmented at all
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], a)
    loader.set_epoch(0)
    assert torch.equal(next(iter(loader))[0], a)
