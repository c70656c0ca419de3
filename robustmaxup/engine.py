"""The training loop: optimiser, schedule, precision, DDP, logging, checkpointing.

It knows methods only through their interface (``prepare``/``loss``/``evaluate`` and the epoch
hook) and weight perturbations only through ``perturbed(model, loss_fn)``.

Example::

    from robustmaxup.engine import TrainConfig, train
    cfg = TrainConfig(dataset="digits", arch="digits_cnn", method="maxup",
                      method_args={"sigma": 0.25, "m": 4}, epochs=10, batch=64, lr=0.05,
                      out="runs/digits-maxup")
    summary = train(cfg)

A run directory holds ``config.json`` (names match the CLI flags), ``metrics.jsonl`` (one line
per epoch), ``last.pt`` (every epoch, atomic) and ``best.pt`` (best validation metric on a split
held out from the *training* set; the checkpoint records which epoch won and by what metric).
``resume=True`` continues from ``last.pt`` and reaches the same weights as an uninterrupted run
under the same seed: batches depend only on (seed, epoch) and the noise generator's state is
checkpointed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from robustmaxup.checkpoints import read_checkpoint, save_checkpoint
from robustmaxup.data import load_split, make_loader, spread_indices, train_val_split
from robustmaxup.errors import UserError
from robustmaxup.methods import PERTURBATIONS, build_method
from robustmaxup.methods.base import LossOutput, Method, WeightPerturbation
from robustmaxup.models import MODELS, build_model
from robustmaxup.utils import (
    atomic_write_json, derive_seed, ensure_writable_dir, make_generator, provenance,
    resolve_device, seed_everything,
)

log = logging.getLogger(__name__)

# Keys of TrainConfig that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {"resume", "device", "epochs", "quiet", "workers", "out"}


@dataclass
class TrainConfig:
    """Everything that defines a run. Field names match ``robustmaxup train`` flags; the method's
    hyper-parameters are in ``method_args`` and a weight perturbation (``"awp"``/``"amp"``) in
    ``perturbation``/``perturbation_args``. Defaults: Cohen et al.'s CIFAR recipe."""

    dataset: str
    out: str
    data_root: str | None = None
    cache_dir: str | None = None
    arch: str = "cifar_resnet110"
    method: str = "gaussian"
    method_args: dict[str, Any] = field(default_factory=dict)
    perturbation: str | None = None
    perturbation_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 90
    batch: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"
    lr_step: int = 30
    lr_gamma: float = 0.1
    data_augment: bool = True  # random crop + flip of the training images
    val_size: int = -1          # -1: min(1000, 10% of train); 0: no validation, no best.pt
    max_train: int = 0          # 0: the whole training split
    max_eval: int = 1000        # test images for the per-epoch monitoring metric (0: none)
    eval_batch: int = 512
    precision: str = "auto"     # auto (bf16 on CUDA, fp32 on CPU), bf16, fp32
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    resume: bool = False
    quiet: bool = False

    def flat(self) -> dict[str, Any]:
        """The config as flat CLI-flag names (method and perturbation options inlined)."""
        d = dataclasses.asdict(self)
        d.update(d.pop("method_args"))
        pert, pargs = d.pop("perturbation"), d.pop("perturbation_args")
        if pert:
            for i, (k, v) in enumerate(pargs.items()):
                d[pert if i == 0 else f"{pert}_{k}"] = v
        return d


# --- validation of the config ------------------------------------------------------------------

def _check_config(cfg: TrainConfig) -> None:
    checks = [
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch >= 1, f"--batch must be >= 1, got {cfg.batch}"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}"),
        (0 <= cfg.momentum < 1, f"--momentum must lie in [0, 1), got {cfg.momentum}"),
        (cfg.lr_step >= 1, f"--lr-step must be >= 1, got {cfg.lr_step}"),
        (cfg.precision in ("auto", "bf16", "fp32"), f"--precision must be auto, bf16 or fp32, got {cfg.precision}"),
        (cfg.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    MODELS.get(cfg.arch)


def build_perturbation(name: str | None, args: dict[str, Any]) -> WeightPerturbation | None:
    if not name:
        return None
    return PERTURBATIONS.get(name)(**args)


# --- schedules ---------------------------------------------------------------------------------

def _step_schedule(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr_gamma ** (epoch // cfg.lr_step)


def _cosine_schedule(cfg: TrainConfig, epoch: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


SCHEDULES = {"step": _step_schedule, "cosine": _cosine_schedule}


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``; a pure function of the config, so resuming is exact."""
    return cfg.lr * SCHEDULES[cfg.schedule](cfg, epoch)


# --- distributed ---------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on
    CPUs; each rank uses cuda:LOCAL_RANK when CUDA is used."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


# --- the run -------------------------------------------------------------------------------------

@dataclass
class Run:
    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: Dist
    model: nn.Module          # the bare model (checkpointed)
    forward: nn.Module        # what methods call: DDP and/or compiled wrapper of ``model``
    method: Method
    perturbation: WeightPerturbation | None
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    splits: dict[str, Any]
    loaders: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    best: dict[str, Any] | None = None

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        use_bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def _check_out_dir(cfg: TrainConfig) -> Path:
    """Refuse a non-empty run directory without --resume; nothing is created here."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not cfg.resume:
        raise UserError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    return out


def _load_splits(cfg: TrainConfig) -> dict[str, Any]:
    train = load_split(cfg.dataset, "train", root=cfg.data_root, cache_dir=cfg.cache_dir)
    if 0 < cfg.max_train < len(train):  # a seeded random subset: splits may be sorted by class
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 4))
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.max_train].sort().values)
    val_size = min(1000, len(train) // 10) if cfg.val_size < 0 else cfg.val_size
    if val_size >= len(train):
        raise UserError(f"--val-size {val_size} leaves no training data ({len(train)} images)")
    val = None
    if val_size:
        train, val = train_val_split(train, val_size, cfg.seed)
    test = None
    if cfg.max_eval:
        test = load_split(cfg.dataset, "test", root=cfg.data_root, cache_dir=cfg.cache_dir)
        test = test.subset(spread_indices(len(test), cfg.max_eval))
    return {"train": train, "val": val, "test": test}


def setup(cfg: TrainConfig, splits: dict[str, Any] | None = None) -> Run:
    """Validate everything, build the run, and restore it from ``last.pt`` when resuming.
    ``splits`` ({"train", "val", "test"}) replaces loading ``cfg.dataset`` (benchmarks, tests)."""
    _check_config(cfg)
    method = build_method(cfg.method, **cfg.method_args)
    perturbation = build_perturbation(cfg.perturbation, cfg.perturbation_args)
    ddp, device = init_distributed(cfg.device)
    if cfg.batch % ddp.world:
        raise UserError(f"--batch {cfg.batch} must be divisible by the number of processes ({ddp.world})")
    out = _check_out_dir(cfg)
    if splits is None:
        if ddp.world > 1 and not ddp.main:
            dist.barrier()  # rank 0 decodes an archive into the cache first; the others then read it
        splits = _load_splits(cfg)
        if ddp.world > 1 and ddp.main:
            dist.barrier()
    info = splits["train"].info
    method.setup(num_classes=info.num_classes)
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, dataset=cfg.dataset).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    if ddp.main:  # created only once the data, model and method are known to be good
        ensure_writable_dir(out)
    generator = make_generator(derive_seed(cfg.seed, ddp.rank, 1), device)
    run = Run(cfg, out, device, ddp, model, model, method, perturbation, optimizer, generator, splits)
    if cfg.resume and (out / "last.pt").exists():
        _restore(run, read_checkpoint(out / "last.pt"))
    run.forward = _wrap(model, cfg, ddp, device)
    run.loaders = _make_loaders(cfg, splits, ddp, device)
    return run


def _make_loaders(cfg: TrainConfig, splits: dict[str, Any], ddp: Dist, device: torch.device) -> dict[str, Any]:
    loaders = {"train": make_loader(
        splits["train"], batch_size=cfg.batch // ddp.world, device=device, train=True, augment=cfg.data_augment,
        seed=cfg.seed, rank=ddp.rank, world_size=ddp.world, drop_last=True, num_workers=cfg.workers)}
    for name in ("val", "test"):
        if splits[name] is not None:
            loaders[name] = make_loader(splits[name], batch_size=cfg.eval_batch, device=device,
                                        train=False, seed=cfg.seed, num_workers=cfg.workers)
    return loaders


def _wrap(model: nn.Module, cfg: TrainConfig, ddp: Dist, device: torch.device) -> nn.Module:
    forward = model
    if ddp.world > 1:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        t0 = time.perf_counter()
        forward = torch.compile(forward)
        log.info("torch.compile wrapped the model in %.1f s (compilation happens on first use)", time.perf_counter() - t0)
    return forward


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    saved = ckpt.get("config") or {}
    new = dataclasses.asdict(run.cfg)
    diff = sorted(k for k in new if k not in _RESUMABLE_CHANGES and k in saved and saved[k] != new[k])
    if diff:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {new[k]!r}" for k in diff)
        raise UserError(f"--resume with a different config ({detail}); use the original flags or a new --out")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    gen_states = rng["generators"]
    if len(gen_states) != run.dist.world:
        raise UserError(f"--resume with {run.dist.world} processes, but the run used {len(gen_states)}")
    run.generator.set_state(gen_states[run.dist.rank])
    run.start_epoch = int(ckpt["epoch"])
    run.best = ckpt.get("best")
    log.info("resuming %s from epoch %d", run.out, run.start_epoch)


# --- one epoch -----------------------------------------------------------------------------------

def _zero_stats(device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.zeros((), device=device, dtype=torch.float64) for k in ("loss", "correct")}


def train_epoch(run: Run, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over this rank's shard; statistics stay on the device until the epoch ends."""
    cfg, method = run.cfg, run.method
    loader = run.loaders["train"]
    loader.set_epoch(epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch)
    method.on_epoch_start(epoch, cfg.epochs)
    if run.perturbation is not None:
        run.perturbation.on_epoch_start(epoch, cfg.epochs)
    run.model.train()
    stats, seen, count, t0 = _zero_stats(run.device), 0, 0, time.perf_counter()
    bar = _progress(loader, f"epoch {epoch + 1}/{cfg.epochs}", progress)
    for x, y in bar:
        if run.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out = train_step(run, x, y)
        stats["loss"] += out.loss.detach().double() * len(y)
        seen += len(y)
        if out.logits is not None:
            stats["correct"] += (out.logits.argmax(1) == out.targets).sum()
            count += len(out.targets)
    stats["seen"] = torch.tensor(float(seen), device=run.device, dtype=torch.float64)
    stats["count"] = torch.tensor(float(count), device=run.device, dtype=torch.float64)
    totals = _all_reduce(stats, run.dist)
    seconds = time.perf_counter() - t0
    return {
        "loss": totals["loss"] / max(totals["seen"], 1),
        "train_acc": totals["correct"] / max(totals["count"], 1),
        "img_per_s": totals["seen"] / seconds,
        "epoch_seconds": seconds,
    }


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
    """One optimiser step of the method on batch ``(x, y)`` (already on the run's device)."""
    method, model = run.method, run.forward
    with run.autocast:
        prepared = method.prepare(model, x, y, generator=run.generator)
    context = contextlib.nullcontext()
    if run.perturbation is not None:
        def loss_fn() -> torch.Tensor:
            with run.autocast:
                return method.loss(run.model, prepared).loss
        context = run.perturbation.perturbed(run.model, loss_fn)
    run.optimizer.zero_grad(set_to_none=True)
    with context:
        with run.autocast:
            out = method.loss(model, prepared)
        out.loss.backward()
    run.optimizer.step()
    return out


def _all_reduce(stats: dict[str, torch.Tensor], ddp: Dist) -> dict[str, float]:
    keys = sorted(stats)
    packed = torch.stack([stats[k] for k in keys])
    if ddp.world > 1:
        dist.all_reduce(packed)
    return dict(zip(keys, packed.tolist()))


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="batch", dynamic_ncols=True, disable=None)


def evaluate(run: Run, name: str, seed_tag: int) -> float:
    """Mean of ``method.evaluate`` over split ``name`` (eval mode; noise from a fixed generator so
    the metric is comparable across epochs). Every rank evaluates the full split; cheap by design."""
    loader = run.loaders.get(name)
    if loader is None:
        return float("nan")
    gen = make_generator(derive_seed(run.cfg.seed, seed_tag), run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.float64)
    count = 0
    was_training = run.model.training
    run.model.eval()
    try:
        with torch.no_grad(), run.autocast:
            for x, y in loader:
                correct += run.method.evaluate(run.model, x, y, generator=gen).sum()
                count += len(y)
    finally:
        run.model.train(was_training)
    return correct.item() / max(count, 1)


def metric_name(method: Method) -> str:
    family = method.family
    if family == "smoothing":
        return f"noisy accuracy (sigma={method.hparams().get('sigma')})"
    if family == "adversarial":
        return "PGD robust accuracy"
    return "clean accuracy"


# --- checkpointing -----------------------------------------------------------------------------

def _checkpoint(run: Run, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    info = run.splits["train"].info
    generators = [run.generator.get_state()]
    if run.dist.world > 1:
        state = generators[0].to(run.device)  # NCCL gathers device tensors, gloo host ones
        gathered = [torch.empty_like(state) for _ in range(run.dist.world)]
        dist.all_gather(gathered, state)
        generators = [g.cpu() for g in gathered]
    return {
        "arch": run.cfg.arch, "dataset": run.cfg.dataset, "num_classes": info.num_classes,
        "in_channels": info.image_shape[0], "mean": list(info.mean), "std": list(info.std),
        "method": run.cfg.method, "hparams": run.method.hparams(),
        "perturbation": run.cfg.perturbation, "perturbation_args": dict(run.cfg.perturbation_args),
        "epoch": epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": {"schedule": run.cfg.schedule, "lr": lr_at(run.cfg, max(epoch - 1, 0))},
        "scaler": None,
        "rng": {"torch": torch.get_rng_state(), "generators": generators},
        "config": dataclasses.asdict(run.cfg), "metrics": metrics, "best": run.best,
        "selection": "last epoch",
    }


def _save(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    ckpt = _checkpoint(run, epoch, metrics)   # collective in DDP: every rank calls it
    if not run.dist.main:
        return
    val = metrics.get("val")
    improved = val is not None and not math.isnan(val) and (run.best is None or val > run.best["value"])
    if improved:
        run.best = {"epoch": epoch, "value": val, "metric": f"validation {metric_name(run.method)}",
                    "val_size": len(run.splits["val"])}
        ckpt["best"] = run.best
        save_checkpoint(run.out / "best.pt", {**ckpt, "selection": f"best {run.best['metric']} on "
                        f"{run.best['val_size']} held-out training images, epoch {epoch}"})
    save_checkpoint(run.out / "last.pt", ckpt)


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Keep only the metric lines of epochs a resumed run already has in its checkpoint."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs:
                keep.append(line)
        except (ValueError, KeyError):
            break
    path.write_text("".join(k + "\n" for k in keep))


@contextlib.contextmanager
def _process_group(run: Run) -> Iterator[None]:
    try:
        yield
    finally:
        if run.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train according to ``cfg``; return a summary (final metrics, best epoch, run directory)."""
    run = setup(cfg)
    with _process_group(run):
        return _train(run)


def _train(run: Run) -> dict[str, Any]:
    cfg, main = run.cfg, run.dist.main
    if main:
        flags = {**cfg.flat(), **run.method.hparams()}  # every flag, method defaults included
        atomic_write_json(run.out / "config.json", {**flags, "provenance": provenance(run.device)})
        _truncate_metrics(run.out / "metrics.jsonl", run.start_epoch)
        log.info("training %s with %s on %s (%d train / %s val images), %s, %d process(es)",
                 cfg.arch, cfg.method, cfg.dataset, len(run.splits["train"]),
                 len(run.splits["val"]) if run.splits["val"] is not None else 0, run.device, run.dist.world)
    metrics: dict[str, float] = {}
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics = train_epoch(run, epoch, progress=main and not cfg.quiet)
        metrics.update(epoch=epoch + 1, lr=lr_at(cfg, epoch),
                       val=evaluate(run, "val", 2), test=evaluate(run, "test", 3))
        if not math.isfinite(metrics["loss"]):
            raise UserError(f"training diverged at epoch {epoch + 1} (loss {metrics['loss']}); lower --lr")
        _save(run, epoch + 1, metrics)
        if main:
            _log_epoch(run, metrics)
    return {"out": str(run.out), "metrics": metrics, "best": run.best}


def _log_epoch(run: Run, m: dict[str, float]) -> None:
    name = metric_name(run.method)
    log.info("epoch %d/%d  loss %.4f  train acc %.3f  val %s %.3f  test %s %.3f  %.0f img/s  lr %.4g  %.1fs",
             m["epoch"], run.cfg.epochs, m["loss"], m["train_acc"], name, m["val"], name, m["test"],
             m["img_per_s"], m["lr"], m["epoch_seconds"])
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}) + "\n")
