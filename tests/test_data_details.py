"""Details of robustmaxup.data that the broader tests in test_data.py leave open: cache keys and
file names, split validation, index selection and sharding, loader bookkeeping and the readers'
input checks. Each test pins one behaviour found unguarded by a mutation audit."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from robustmaxup.data import ImageSplit, get_info, load_split
from robustmaxup.data.cache import archive_key, cached, default_cache_dir, load_cache, tree_key
from robustmaxup.errors import UserError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never write to the user's real cache directory."""
    monkeypatch.setenv("ROBUSTMAXUP_CACHE", str(tmp_path / "default-cache"))


# --------------------------------------------------------------------------------------------
# The decode-once cache
# --------------------------------------------------------------------------------------------


def test_default_cache_dir_without_env_is_under_home(tmp_path, monkeypatch):
    """Without $ROBUSTMAXUP_CACHE the cache is ~/.cache/robustmaxup, not ~/.cache itself."""
    monkeypatch.delenv("ROBUSTMAXUP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "robustmaxup"


def _set_mtime(path, ns):
    os.utime(path, ns=(ns, ns))


def test_archive_key_changes_with_size_and_with_mtime(tmp_path):
    """Rewriting an archive changes its key whether only its size or only its mtime changed."""
    p = tmp_path / "a.tar.gz"
    p.write_bytes(b"x" * 10)
    _set_mtime(p, 1_000_000_000_000_000_000)
    k0 = archive_key(p)
    _set_mtime(p, 1_000_000_000_000_000_001)  # same bytes, touched
    k1 = archive_key(p)
    p.write_bytes(b"x" * 11)
    _set_mtime(p, 1_000_000_000_000_000_001)  # grown, same mtime
    k2 = archive_key(p)
    assert len({k0, k1, k2}) == 3


def test_tree_key_names_the_root(tmp_path):
    """Two identical trees (same relative files, sizes and mtimes) in different places have
    different keys."""
    keys = []
    for name in ("one", "two"):
        root = tmp_path / name
        f = root / "train" / "cat" / "0.png"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"abc")
        _set_mtime(f, 1_000_000_000_000_000_000)
        keys.append(tree_key(root, [f]))
    assert keys[0] != keys[1]


def test_cache_file_is_named_by_sha256_prefix(tmp_path):
    """The cache file is ``<name>-<stem>-<sha256(key)[:16]>.npz`` in the cache directory."""
    arrays = {"train_images": np.zeros((1, 1, 2, 2), np.uint8), "train_labels": np.zeros(1, np.int64),
              "test_images": np.zeros((1, 1, 2, 2), np.uint8), "test_labels": np.zeros(1, np.int64),
              "classes": np.array(["a"])}
    cached(tmp_path / "data.tar.gz", "the key", "cifar10", "train", tmp_path / "c", lambda: arrays)
    digest = hashlib.sha256(b"the key").hexdigest()[:16]
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"cifar10-data-{digest}.npz"]


@pytest.mark.parametrize("content", [b"not a numpy file at all", b"PK\x03\x04truncated zip"])
def test_unreadable_cache_file_is_ignored(tmp_path, content):
    """A corrupt cache file reads as a miss (None), whatever error numpy raises on it."""
    p = tmp_path / "x.npz"
    p.write_bytes(content)
    assert load_cache(p, ["train_images"]) is None


# --------------------------------------------------------------------------------------------
# ImageSplit validation
# --------------------------------------------------------------------------------------------


def test_image_split_rejects_non_uint8_and_mismatched_labels():
    """ImageSplit insists on uint8 [N, C, H, W] pixels and [N] labels."""
    info = get_info("digits")
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(info, "x", torch.zeros(2, 1, 8, 8), torch.zeros(2), ["0"])
    with pytest.raises(ValueError, match="labels"):
        ImageSplit(info, "x", torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3), ["0"])


def test_from_tensors_rounds_float_pixels_to_nearest():
    """Float pixels slightly below k/255 come back as exactly k (rounded, not truncated)."""
    k = torch.arange(256, dtype=torch.float32)
    x = ((k - 0.3).clamp(min=0) / 255).view(4, 1, 8, 8)
    split = ImageSplit.from_tensors(x, torch.zeros(4, dtype=torch.long), get_info("digits"))
    assert torch.equal(split.images.flatten().long(), k.long())


def test_batch_labels_are_a_copy_and_subset_takes_its_name():
    """``batch`` hands out labels the caller may modify; ``subset(split=...)`` names the part."""
    split = load_split("digits", "test")
    before = split.labels.clone()
    _, y = split.batch([0, 1, 2])
    y += 5
    assert torch.equal(split.labels, before)
    assert split.subset([0, 1], split="test[few]").split == "test[few]"
    assert split.subset([0, 1]).split == "test"


def test_check_indices_bounds_and_emptiness():
    """Indices must be non-empty and lie in ``[0, size)``: ``size`` itself is out."""
    from robustmaxup.data.splits import check_indices
    from robustmaxup.runtime.checks import FieldError

    assert check_indices([0, 2], 3) == [0, 2]
    with pytest.raises(FieldError, match="must lie in"):
        check_indices([3], 3)
    with pytest.raises(FieldError, match="at least one"):
        check_indices([], 3)


def test_check_split_needs_info():
    """A split-like object without ``.info`` is refused."""
    from robustmaxup.data.splits import check_split

    class NoInfo:
        def __len__(self):
            return 1

        def batch(self, indices):
            return None

    with pytest.raises(UserError, match="info"):
        check_split(NoInfo())
    check_split(load_split("digits", "test"))


def test_folder_eval_transform_resizes_by_256_over_224():
    """Evaluation transform: Resize(size * 256/224) then CenterCrop(size) (224 -> 256)."""
    from torchvision import transforms as T

    from robustmaxup.data.splits import folder_transform

    resize, crop, _ = folder_transform(False, (224, 224)).transforms
    assert isinstance(resize, T.Resize) and resize.size == 256
    assert isinstance(crop, T.CenterCrop) and tuple(crop.size) == (224, 224)
    assert isinstance(folder_transform(True, (224, 224)).transforms[0], T.RandomResizedCrop)


# --------------------------------------------------------------------------------------------
# Which examples: spread subsets, the stratified hold-out
# --------------------------------------------------------------------------------------------


def test_spread_indices_floor_of_i_n_over_k():
    """``spread_indices(n, k)[i] == floor(i * n / k)``; all of ``range(n)`` when k >= n."""
    from robustmaxup.data import spread_indices

    assert spread_indices(10, 4).tolist() == [0, 2, 5, 7]
    assert spread_indices(9, 3).tolist() == [0, 3, 6]
    assert spread_indices(5, 9).tolist() == list(range(5))


@pytest.mark.parametrize("size, skip, max_images, want", [
    (10, 3, -1, [0, 3, 6, 9]), (10, 3, 2, [0, 6]), (10, 1, 10, list(range(10))),
    (360, 45, 6, [0, 45, 90, 180, 225, 270]),
])
def test_select_indices_every_skip_th_from_zero_then_spread(size, skip, max_images, want):
    """Every ``skip``-th index starting at 0, then ``max_images`` of them spread evenly."""
    from robustmaxup.data import select_indices

    assert select_indices(size, skip, max_images) == want


@pytest.mark.parametrize("counts, k", [([3, 3, 3, 1], 5), ([7, 2, 1], 5), ([50, 30, 15, 5], 17),
                                       ([1, 1, 1, 1, 6], 3)])
def test_stratified_pick_gives_each_class_floor_or_ceil_of_its_share(counts, k):
    """Exactly ``k`` distinct indices, ascending; each class gets floor or ceil of
    ``k * count / n``, the extra picks going to the largest fractional parts."""
    from robustmaxup.data.sampling import stratified_pick

    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    idx = stratified_pick(labels, k, seed=3)
    assert len(idx) == k and len(set(idx.tolist())) == k
    assert idx.tolist() == sorted(idx.tolist())
    got = torch.bincount(labels[idx], minlength=len(counts)).tolist()
    n = sum(counts)
    for c, g in zip(counts, got):
        assert int(np.floor(c * k / n)) <= g <= int(np.ceil(c * k / n))
    # ties in the fractional part go to the lower class; larger fractions before smaller ones
    frac = [c * k / n - np.floor(c * k / n) for c in counts]
    extra = [g - int(np.floor(c * k / n)) for c, g in zip(counts, got)]
    assert all(not (extra[i] == 0 and extra[j] == 1 and frac[i] > frac[j])
               for i in range(len(counts)) for j in range(len(counts)))


def test_train_val_split_size_bounds():
    """``val_size`` must be in ``1 .. len(split) - 1``."""
    from robustmaxup.data import train_val_split

    split = load_split("digits", "test")
    for bad in (0, len(split)):
        with pytest.raises(UserError, match="validation size"):
            train_val_split(split, bad, seed=0)
    tr, va = train_val_split(split, len(split) - 1, seed=0)
    assert (len(tr), len(va)) == (1, len(split) - 1)


# --------------------------------------------------------------------------------------------
# Loaders: argument checks, batch counts, per-rank augmentation streams
# --------------------------------------------------------------------------------------------


def _copies(n):
    """``n`` copies of one digits image: batches can differ only through the augmentation draws."""
    split = load_split("digits", "train")
    return split.subset([5] * n)


def test_loader_argument_checks():
    """Batch size below 1 and a negative worker count are refused."""
    from robustmaxup.data import make_loader

    split = _copies(4)
    with pytest.raises(UserError, match="batch size"):
        make_loader(split, 0, "cpu", train=False, seed=0)
    make_loader(split, 1, "cpu", train=False, seed=0)
    samples = [("/nowhere/0.png", 0)]
    from robustmaxup.data.splits import FolderSplit

    folder = FolderSplit(get_info("imagenet"), "train", samples, ["a"])
    with pytest.raises(UserError, match="num_workers"):
        make_loader(folder, 1, "cpu", train=False, seed=0, num_workers=-1)


@pytest.mark.parametrize("n, world, batch, drop_last, want", [
    (10, 4, 1, False, 3), (10, 4, 2, False, 2), (10, 4, 2, True, 1), (9, 2, 5, False, 1), (9, 2, 4, True, 1),
])
def test_train_len_counts_padded_shards(n, world, batch, drop_last, want):
    """Training: every rank gets ``ceil(n / world)`` examples (wrapped padding), so ``len`` is
    ``ceil`` (or floor with drop_last) of that over the batch size, and matches iteration."""
    from robustmaxup.data import make_loader

    for rank in range(world):
        ld = make_loader(_copies(n), batch, "cpu", train=True, seed=0, rank=rank, world_size=world,
                         drop_last=drop_last, augment=False)
        assert len(ld) == want == len(list(ld))


@pytest.mark.parametrize("n, world", [(2, 5), (1, 4), (3, 8), (10, 4)])
def test_train_shards_cover_many_more_ranks_than_examples(n, world):
    """With more ranks than twice the examples the padding wraps around more than once: every
    rank still gets ``ceil(n / world)`` indices, and together they cover ``range(n)``."""
    from robustmaxup.data import epoch_indices

    shards = [epoch_indices(n, train=True, seed=0, epoch=0, rank=r, world_size=world)
              for r in range(world)]
    assert all(len(s) == -(-n // world) for s in shards)
    assert set(torch.cat(shards).tolist()) == set(range(n))


def test_augmentation_draws_differ_between_ranks():
    """Each rank draws its crops from its own stream (seed, epoch, rank): identical images on two
    ranks are augmented differently."""
    from robustmaxup.data import make_loader

    split = _copies(64)
    xs = [next(iter(make_loader(split, 32, "cpu", train=True, seed=0, rank=r, world_size=2,
                                augment=True)))[0] for r in range(2)]
    assert not torch.equal(xs[0], xs[1])


@pytest.fixture
def one_image_folder(tmp_path):
    """A FolderSplit (ImageNet spec) of 4 entries that all point at one 40x40 PNG."""
    from PIL import Image

    from robustmaxup.data.splits import FolderSplit

    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return FolderSplit(get_info("imagenet"), "train", [(str(path), 0)] * 4, ["a"], augment=True)


def test_folder_crops_differ_between_ranks(one_image_folder):
    """FolderLoader seeds its random crops per rank too (num_workers=0)."""
    from robustmaxup.data import make_loader

    xs = [next(iter(make_loader(one_image_folder, 2, "cpu", train=True, seed=0, rank=r, world_size=2,
                                num_workers=0)))[0] for r in range(2)]
    assert not torch.equal(xs[0], xs[1])


def test_folder_loader_leaves_the_global_rng_alone(one_image_folder):
    """Iterating a FolderLoader in the main process neither reads nor advances torch's global RNG."""
    from robustmaxup.data import make_loader

    loader = make_loader(one_image_folder, 2, "cpu", train=True, seed=0, num_workers=0)
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    first = [x for x, _ in loader]
    assert torch.equal(torch.rand(3), want)
    torch.manual_seed(12)
    assert all(torch.equal(a, b) for (a, _), b in zip(loader, first))


# --------------------------------------------------------------------------------------------
# CIFAR readers: input checks and layout details
# --------------------------------------------------------------------------------------------

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_PY = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _python_cifar(folder, names, label_key, labels, meta=None, data_bytes=3072):
    """A torchvision python-format folder whose every batch holds ``labels``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        data = rng.integers(0, 256, (len(labels), data_bytes), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, label_key: list(labels)}, protocol=2))
    if meta is not None:
        (folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [c.encode() for c in meta[2]]}, protocol=2))


def _png_tree(root, classes_by_split, seed=0):
    """root/<split>/<class>/0.png (32x32 random) for each class of each split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, classes in classes_by_split.items():
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "0.png")


def test_python_batch_with_wrong_pixel_count_is_refused(tmp_path):
    """A batch whose pixel bytes are not 3072 per label is a UserError, not a reshape crash."""
    _python_cifar(tmp_path / "cifar-10-batches-py", CIFAR10_PY, b"labels", [0, 1], data_bytes=3071)
    with pytest.raises(UserError, match="3072"):
        load_split("cifar10", "train", root=tmp_path)


def test_python_labels_must_name_a_class(tmp_path):
    """A label equal to the class count is out of range."""
    meta = ("batches.meta", b"label_names", CIFAR10)
    _python_cifar(tmp_path / "cifar-10-batches-py", CIFAR10_PY, b"labels", [0, 10], meta=meta)
    with pytest.raises(UserError, match="outside 0..9"):
        load_split("cifar10", "test", root=tmp_path)


def test_python_split_without_images_is_refused(tmp_path):
    """A split whose batches hold zero images is a UserError naming the split, not a numpy crash."""
    folder = tmp_path / "cifar-10-batches-py"
    _python_cifar(folder, CIFAR10_PY[:-1], b"labels", [0, 1])
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (folder / "test_batch").write_bytes(pickle.dumps(empty))
    with pytest.raises(UserError, match="test batches .* hold no images"):
        load_split("cifar10", "train", root=tmp_path)


def test_cifar100_without_meta_names_classes_by_index(tmp_path):
    """Without a meta file, CIFAR-100 classes are class_0..class_{max label}; here all 100."""
    _python_cifar(tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", list(range(100)))
    s = load_split("cifar100", "test", root=tmp_path)
    assert s.classes == [f"class_{i}" for i in range(100)]
    assert s.labels.tolist() == list(range(100))


def test_class_count_must_match_the_dataset(tmp_path):
    """A CIFAR-10-sized meta file under a CIFAR-100 folder is refused (10 != 100 classes)."""
    meta = ("meta", b"fine_label_names", CIFAR10)
    _python_cifar(tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", [0, 1], meta=meta)
    with pytest.raises(UserError, match="10 classes"):
        load_split("cifar100", "train", root=tmp_path)


def test_hidden_files_in_an_image_tree_are_skipped(tmp_path):
    """Dot files beside the images (``.DS_Store``) are not taken for images."""
    _png_tree(tmp_path, {"train": CIFAR10, "test": CIFAR10})
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    s = load_split("cifar10", "train", root=tmp_path, cache_dir=tmp_path / "c")
    assert len(s) == 10


def test_train_and_test_class_folders_must_agree(tmp_path):
    """train/ and test/ with different class folders are refused, naming the odd ones out."""
    _png_tree(tmp_path, {"train": CIFAR10, "test": CIFAR10[:9] + ["zebra"]})
    with pytest.raises(UserError, match="different class folders"):
        load_split("cifar10", "train", root=tmp_path, cache_dir=tmp_path / "c")


def test_tarball_members_are_ordered_by_class_then_name(tmp_path):
    """A tarball whose members come in reverse order still gives class-sorted, name-sorted
    images (the ImageFolder order)."""
    import tarfile

    _png_tree(tmp_path / "tree", {"train": CIFAR10, "test": CIFAR10})
    from PIL import Image

    extra = tmp_path / "tree" / "train" / "cat" / "1.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(extra)
    files = sorted(p for p in (tmp_path / "tree").rglob("*.png"))
    with tarfile.open(tmp_path / "rev.tar", "w") as tar:
        for p in reversed(files):
            tar.add(p, arcname=str(p.relative_to(tmp_path / "tree")))
    s = load_split("cifar10", "train", root=tmp_path / "rev.tar", cache_dir=tmp_path / "c")
    assert s.labels.tolist() == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    assert bool((s.images[4] == 7).all()) and not bool((s.images[3] == 7).all())


def test_python_files_in_a_tarball_must_sit_in_the_format_folder(tmp_path):
    """Batch files under some other folder of a tarball are not taken for CIFAR-10."""
    import tarfile

    _python_cifar(tmp_path / "elsewhere", CIFAR10_PY, b"labels", [0, 1])
    with tarfile.open(tmp_path / "c.tar", "w") as tar:
        tar.add(tmp_path / "elsewhere", arcname="elsewhere")
    with pytest.raises(UserError, match="no CIFAR-10 found in archive"):
        load_split("cifar10", "train", root=tmp_path / "c.tar", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("kwarg", ["root", "cache_dir"])
def test_bundled_dataset_refuses_root_and_cache(kwarg, tmp_path):
    """digits ships with scikit-learn: a data root or cache dir given for it is an error."""
    from robustmaxup.runtime.checks import FieldError

    with pytest.raises(FieldError, match="not used by digits"):
        load_split("digits", "test", **{kwarg: tmp_path})
