"""A run's parts: the fixed ones (:class:`Run`, built once by :func:`build_run`) and the small
mutable training state (:class:`TrainState`: epochs done, best epoch, metrics history, the
noise generator) that checkpoints carry.

Example::

    with setup(TrainConfig(dataset="digits", out="runs/d", arch="digits_cnn")) as run:  # train.loop
        run.model, run.loaders["train"], run.state.epoch
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from robustmaxup.certify.bounds import min_samples_to_certify_radius
from robustmaxup.data import (
    CropFlip, check_split, get_info, load_split, make_loader, spread_indices, train_val_split,
)
from robustmaxup.errors import UserError, ref
from robustmaxup.methods import Method, WeightPerturbation
from robustmaxup.models import build_model
from robustmaxup.models.state import check_model_output
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.faults import fault_point
from robustmaxup.runtime.io import FileLock, check_not_inputs, check_output_path, shown
from robustmaxup.runtime.limits import MAX_NOISE_DRAWS
from robustmaxup.runtime.seeds import seed_everything, stream_generator, stream_seed
from robustmaxup.train.config import TrainConfig, read_flat
from robustmaxup.train.recipes import recipe_values

log = logging.getLogger(__name__)

__all__ = ["Run", "TrainState", "RunDirLock", "build_run", "load_splits", "check_out_dir", "metric_name",
           "check_eval_metric", "check_loader_options", "train_augmentation"]


@dataclass
class TrainState:
    """What changes while training, and is checkpointed: ``epoch`` epochs are done; ``best`` is
    the best validation epoch so far (or None); ``history`` holds every done epoch's metrics;
    ``generator`` draws the method's noise (and attacks) on this rank; ``sessions`` lists each
    call that trained the run (rank 0: :func:`robustmaxup.train.checkpointing.begin_session`)."""

    generator: torch.Generator
    epoch: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Run:
    """The fixed parts of a run, built once by :func:`build_run`; only ``state`` changes.

    ``model`` is the bare model (checkpointed); ``forward`` what methods call (the DDP and/or
    compiled wrapper of ``model``). ``splits`` and ``loaders`` are keyed ``"train"``, ``"val"``,
    ``"test"`` (``val``/``test`` may be None, and then have no loader). ``record`` is the flat
    config with the method's resolved hyper-parameters (:meth:`TrainConfig.record`)."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: Dist
    model: nn.Module
    forward: nn.Module
    method: Method
    perturbation: WeightPerturbation | None
    optimizer: torch.optim.Optimizer
    splits: Mapping[str, Any]
    loaders: Mapping[str, Any]
    record: Mapping[str, Any]
    state: TrainState
    lock: RunDirLock | None = None

    def close(self) -> None:
        """Release the run directory's lock and leave the process group (what :func:`train`
        does at its end); a run from :func:`~robustmaxup.train.setup` is also a context manager
        that closes itself: ``with setup(cfg) as run: ...``. Safe to call twice."""
        if self.lock is not None:
            self.lock.release()
        self.dist.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bf16(self) -> bool:
        """Whether steps run under bf16 autocast (``precision="auto"``: on CUDA)."""
        return self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked (:attr:`bf16`), else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @property
    def metric(self) -> str:
        return metric_name(self.method, self.cfg)


def metric_name(method: Method, cfg: TrainConfig | None = None) -> str:
    """What the per-epoch validation/test number measures for ``method``'s family (and, for
    smoothing methods, ``cfg.eval_radius``)."""
    if method.family == "smoothing":
        sigma = method.hparams().get("sigma")
        if cfg is not None and cfg.eval_radius is not None:
            return (f"certified accuracy at r={cfg.eval_radius:g} (sigma={sigma}, n={cfg.eval_n}, "
                    f"alpha={cfg.eval_alpha:g})")
        return f"noisy accuracy (sigma={sigma})"
    if method.family == "adversarial":
        hp = method.hparams()
        if {"norm", "attack_eps", "eval_steps"} <= set(hp):
            return f"PGD-{hp['eval_steps']} {hp['norm']} eps={hp['attack_eps']:.4g} robust accuracy"
        return "PGD robust accuracy"
    return "clean accuracy"


def check_eval_metric(cfg: TrainConfig, method: Method) -> None:
    """FieldError unless ``cfg.eval_radius`` (if set) fits ``method``: a smoothing method, and
    ``cfg.eval_n`` samples enough to certify the radius at its sigma even with unanimous votes."""
    if cfg.eval_radius is None:
        for name in ("eval_n", "eval_alpha"):
            if getattr(cfg, name) != TrainConfig.__dataclass_fields__[name].default:
                raise FieldError(name, f"applies only with {ref('eval_radius')} (certified accuracy as the "
                                       f"per-epoch metric); set {ref('eval_radius')} or drop it")
        return
    if method.family != "smoothing":
        raise FieldError("eval_radius", f"applies to smoothing methods only; {cfg.method} here is validated "
                                        f"by {metric_name(method)}")
    if cfg.val_size == 0 and cfg.max_eval == 0:
        raise FieldError("eval_radius", f"has nothing to evaluate: no validation images ({ref('val_size', 0)}) "
                                        f"and no test images ({ref('max_eval', 0)})")
    sigma = float(method.hparams()["sigma"])
    try:
        need = min_samples_to_certify_radius(cfg.eval_radius, sigma, cfg.eval_alpha)
    except UserError as e:
        raise FieldError("eval_radius", f"is too large: {e}") from None
    if need > MAX_NOISE_DRAWS:
        raise FieldError("eval_radius", f"is too large: certifying {cfg.eval_radius:g} at sigma {sigma:g} "
                                        f"needs {need} or more noisy copies per image (at most {MAX_NOISE_DRAWS})")
    if cfg.eval_n < need:
        raise FieldError("eval_n", f"is {cfg.eval_n}: too few to ever certify radius {cfg.eval_radius:g} at "
                                   f"sigma {sigma:g} and alpha {cfg.eval_alpha:g}, even with unanimous "
                                   f"votes; use {need} or more")


#: the files of a run directory, and its lock file (present while a run holds it, or after a kill)
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json")
LOCK_FILE = ".robustmaxup.lock"


def check_out_dir(cfg: TrainConfig) -> Path:
    """The run directory; a FieldError if it cannot be one (a file, a name too long, under
    ``/proc``), is the data root, is non-empty without ``resume``, or (with ``resume``) holds
    a run file that is not a regular file, or run files without ``last.pt`` beside something
    other than a robustmaxup ``config.json`` (what an unstarted run of ours leaves; anything else
    is not ours to write over). Nothing is created here.

    ``--config DIR/config.json --out DIR`` is allowed only with ``resume``: the resume guard
    then ensures the config.json the run rewrites records the same run.
    """
    out = check_output_path(cfg.out, "out", kind="dir")
    check_not_inputs([("out", out)], [(f"the data root ({ref('data_root')})", cfg.data_root)])
    if not out.is_dir():
        return out
    if not cfg.resume and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise FieldError("resume", f"is needed to continue the non-empty run directory {shown(out)} "
                                   "(or choose another output directory)")
    if cfg.resume:
        for name in RUN_FILES:
            path = out / name
            if os.path.lexists(path) and not (path.is_file() and not path.is_symlink()):
                raise FieldError("out", f"{shown(out)} holds a {name} that is not a regular file; "
                                        "it is not a run directory of robustmaxup train")
        if not (out / "last.pt").exists() and any((out / name).exists() for name in RUN_FILES):
            try:
                read_flat(out / "config.json")
            except UserError:
                raise FieldError("out", f"{shown(out)} holds run files but neither a last.pt nor a config.json "
                                        "of robustmaxup train; it is not a run directory to resume (its "
                                        "files are never written over)") from None
    return out


def _listing(out: Path) -> list[tuple[str, int, int]]:
    try:
        return sorted((p.name, p.lstat().st_size, p.lstat().st_mtime_ns)
                      for p in out.iterdir() if p.name != LOCK_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return []


class RunDirLock:
    """The lock of a run directory, held for the whole run: a second ``train`` into the same
    ``--out`` fails with one line instead of interleaving checkpoints. Created when the
    directory is checked (nothing on disk then); :meth:`acquire` locks it once the directory
    exists and refuses if another run changed it since the check; a killed run leaves no stale
    lock (``flock`` dies with the process)."""

    def __init__(self, out: Path) -> None:
        self.out, self._checked = out, _listing(out)
        self.existed = out.is_dir()  # before this run: a directory it made is its to remove
        self._lock = FileLock(out / LOCK_FILE, what=f"run directory {shown(out)}")

    def acquire(self) -> "RunDirLock":
        self._lock.acquire()
        if _listing(self.out) != self._checked:
            self._lock.release()
            raise UserError(f"run directory {shown(self.out)} changed while this run started "
                            "(another run?); check it and start again")
        fault_point("train.locked")
        return self

    def release(self) -> None:
        self._lock.release()

    @property
    def started_empty(self) -> bool:
        """Whether the run directory held no file (other than a lock) when this run checked it."""
        return not self._checked


def load_splits(cfg: TrainConfig) -> dict[str, Any]:
    """``{"train", "val", "test"}`` of ``cfg.dataset``: the (``max_train``-subsetted) training
    split less a stratified validation hold-out, and ``max_eval`` evenly spread test images."""
    train = load_split(cfg.dataset, "train", root=cfg.data_root, cache_dir=cfg.cache_dir)
    if 0 < cfg.max_train < len(train):  # a seeded random subset: splits may be sorted by class
        g = stream_generator(cfg.seed, "train.subset")
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.max_train].sort().values)
    val_size = min(1000, len(train) // 10) if cfg.val_size < 0 else cfg.val_size
    if val_size >= len(train):
        raise FieldError("val_size", f"{val_size} leaves no training data ({len(train)} images)")
    val = None
    if val_size:
        train, val = train_val_split(train, val_size, stream_seed(cfg.seed, "train.val_split"))
    test = None
    if cfg.max_eval:
        test = load_split(cfg.dataset, "test", root=cfg.data_root, cache_dir=cfg.cache_dir)
        test = test.subset(spread_indices(len(test), cfg.max_eval))
    return {"train": train, "val": val, "test": test}


def _check_steps(cfg: TrainConfig, train: Any, method: Method, world: int) -> None:
    """Refuse a run that would take no optimiser step (the last short batch is dropped), whose
    reference chunks would hold no example, or that asks for a step structure its method cannot
    tell apart (one reference step per batch: ``joint`` would change nothing)."""
    if cfg.step_structure == "joint" and method.reference_chunks() == 1:
        raise FieldError("step_structure", f"joint changes nothing for {method.name} as configured: its "
                                           "reference takes one step per loader batch; drop it")
    if cfg.batch > len(train):
        raise FieldError("batch", f"must be at most the number of training images ({len(train)}), "
                                  f"got {cfg.batch}: no training step would be taken; lower it or train on "
                                  f"more images ({ref('max_train')}, {ref('val_size')})")
    chunks = method.reference_chunks() if cfg.step_structure == "reference" else 1
    if cfg.batch // world < chunks:
        raise FieldError("batch", f"must give each process at least {chunks} examples "
                                  f"({method.name}'s reference structure takes {chunks} steps per "
                                  f"loader batch), got {cfg.batch} over {world} process(es)")


def build_run(cfg: TrainConfig, *, method: Method, perturbation: WeightPerturbation | None,
              dist: Dist, device: torch.device, out: Path, splits: Mapping[str, Any],
              lock: RunDirLock | None = None) -> Run:
    """Build the model, optimiser, loaders and wrappers of a validated config (see
    :func:`robustmaxup.train.loop.setup`, which calls this); creates nothing on disk."""
    splits = {"train": splits["train"], "val": splits.get("val"), "test": splits.get("test")}
    if splits["train"] is None:
        raise UserError("a run needs a training split")
    for name, split in splits.items():
        if split is not None:
            check_split(split)
            if split.info.name != cfg.dataset:
                raise UserError(f"the {name} split is of dataset {split.info.name}, but the config trains on "
                                f"{cfg.dataset}; set {ref('dataset', split.info.name)}")
    _check_steps(cfg, splits["train"], method, dist.world)
    info = splits["train"].info
    method.setup(num_classes=info.num_classes)
    seed_everything(stream_seed(cfg.seed, "train.init"))
    model = build_model(cfg.arch, info.num_classes, in_channels=info.image_shape[0],
                        mean=tuple(info.mean), std=tuple(info.std)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    probe, _ = splits["train"].batch(list(range(min(2, len(splits["train"])))))
    check_model_output(model, probe.to(device), info.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    state = TrainState(generator=stream_generator(cfg.seed, "train.noise", dist.rank, device=device))
    return Run(cfg=cfg, out=out, device=device, dist=dist, model=model,
               forward=_wrap(model, cfg, dist, device), method=method, perturbation=perturbation,
               optimizer=optimizer, splits=splits, loaders=_make_loaders(cfg, splits, dist, device),
               record=cfg.record(method.hparams()), state=state, lock=lock)


def check_loader_options(cfg: TrainConfig) -> None:
    """FieldError for a loader option the dataset has no use for: a crop padding without a
    padded random crop (:func:`train_augmentation`), or ``workers`` for data held in memory."""
    train_augmentation(cfg)
    default = TrainConfig.__dataclass_fields__["workers"].default
    if get_info(cfg.dataset).device_resident and cfg.workers != default:
        raise FieldError("workers", f"applies to datasets read from disk (imagenet); {cfg.dataset} is "
                                    "held in memory and loaded without workers")


def train_augmentation(cfg: TrainConfig) -> CropFlip | bool:
    """The training split's augmentation: False, the dataset's own (True), or its padded random
    crop with ``cfg.crop_padding``. A padding other than zeros that cannot act (no padded crop
    in the dataset's policy, or ``data_augment`` off) is a FieldError when it was asked for, and
    left unused when it is the recipe's (``--recipe pgd_at --dataset imagenet`` trains)."""
    policy = get_info(cfg.dataset).augment
    crops = isinstance(policy, CropFlip) and cfg.data_augment
    recipe = recipe_values(cfg.recipe).get("crop_padding") if cfg.recipe else None
    if not crops and cfg.crop_padding != "zeros" and cfg.crop_padding != recipe:
        why = f"with {ref('data_augment', False)}" if isinstance(policy, CropFlip) else f"for {cfg.dataset}, which has none"
        raise FieldError("crop_padding", f"applies to the padded random crop of training images; there is "
                                         f"none {why}")
    if not isinstance(policy, CropFlip):
        return cfg.data_augment
    return dataclasses.replace(policy, padding=cfg.crop_padding) if cfg.data_augment else False


def _make_loaders(cfg: TrainConfig, splits: Mapping[str, Any], dist: Dist, device: torch.device) -> dict[str, Any]:
    loaders = {"train": make_loader(
        splits["train"], batch_size=cfg.batch // dist.world, device=device, train=True,
        augment=train_augmentation(cfg), seed=cfg.seed, rank=dist.rank, world_size=dist.world,
        drop_last=True, num_workers=cfg.workers)}
    for name in ("val", "test"):
        if splits[name] is not None:
            loaders[name] = make_loader(splits[name], batch_size=cfg.eval_batch, device=device,
                                        train=False, seed=cfg.seed, num_workers=cfg.workers)
    return loaders


def _wrap(model: nn.Module, cfg: TrainConfig, dist: Dist, device: torch.device) -> nn.Module:
    forward = model
    if dist.distributed:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        t0 = time.perf_counter()
        forward = torch.compile(forward)
        log.info("torch.compile wrapped the model in %.1f s (compilation happens on first use)",
                 time.perf_counter() - t0)
    return forward
