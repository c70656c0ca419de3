"""The training loop: :func:`setup` a run, then epochs of :func:`train_batch` (one loader batch:
one or more :func:`train_step`) with per-epoch :func:`evaluate`, checkpoints and metrics;
:func:`train` does it all.

Steps per loader batch (``cfg.step_structure``): ``"reference"`` splits each loader batch into
``method.reference_chunks()`` consecutive chunks and takes one optimiser step per chunk, as the
method's reference code does (SmoothAdv, SmoothMix, consistency: m steps of B/m examples x m noise
copies); ``"joint"`` takes one step on the whole batch.

It knows methods only through their interface (``prepare``/``loss``/``evaluate`` and the epoch
hook) and weight perturbations only through ``perturbed(model, loss_fn)``. Every random draw
comes from a named seed stream (:data:`robustmaxup.runtime.seeds.STREAMS`): ``train.init``
(model initialisation), ``train.noise`` (the method's per-rank generator, checkpointed),
``train.subset``, ``train.val_split``, ``eval.val`` and ``eval.test``; the loaders draw each
epoch's order and augmentation from ``(seed, epoch)``. So a resumed run reaches the same weights
as an uninterrupted one.

Example::

    from robustmaxup.train import TrainConfig, train
    summary = train(TrainConfig(dataset="digits", arch="digits_cnn", method="maxup",
                                method_args={"sigma": 0.25, "copies": 4}, epochs=10, batch=64,
                                lr=0.05, out="runs/digits-maxup"))
    summary["metrics"]["test"], summary["best"]
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Iterable, Iterator, Mapping

import torch

from robustmaxup.certify import Smooth
from robustmaxup.errors import UserError
from robustmaxup.methods import LossOutput, Method, PERTURBATIONS, WeightPerturbation, build_method
from robustmaxup.runtime.checks import FieldError, check_choice
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.io import ensure_writable_dir, shown
from robustmaxup.runtime.progress import Progress
from robustmaxup.runtime.records import provenance
from robustmaxup.runtime.seeds import stream_generator
from robustmaxup.train import checkpointing, recipes
from robustmaxup.train.config import PerturbationSpec, TrainConfig, lr_at, recipe_overrides
from robustmaxup.train.state import (
    RUN_FILES, Run, RunDirLock, build_run, check_eval_metric, check_loader_options, check_out_dir, load_splits,
)

log = logging.getLogger(__name__)

__all__ = ["setup", "train", "train_epoch", "train_batch", "train_step", "evaluate", "certified_accuracy",
           "build_perturbation", "steps_per_batch"]


def build_perturbation(spec: PerturbationSpec | None) -> WeightPerturbation | None:
    """The weight perturbation of ``spec`` (None: none). A bad argument is a FieldError naming
    its flat name (``awp_gamma``)."""
    if spec is None:
        return None
    try:
        return PERTURBATIONS.get(spec.name)(**spec.args)
    except FieldError as e:
        if e.field in spec.args:
            raise FieldError(f"{spec.name}_{e.field}", e.problem) from None
        raise


def setup(cfg: TrainConfig, splits: Mapping[str, Any] | None = None) -> Run:
    """Validate everything, build the run, and restore it from ``last.pt`` when resuming.

    Nothing is written before every check has passed (config, method, device, run directory,
    resume compatibility, data); then the run directory is created. Joins the process group
    under torchrun. The run holds its directory's lock until ``run.close()`` (or use it as a
    context manager, ``with setup(cfg) as run: ...``); :func:`train` closes its own.
    ``splits`` (``{"train", "val", "test"}``) replaces loading ``cfg.dataset`` (benchmarks, tests).
    """
    cfg.validate()
    method = build_method(cfg.method, **cfg.method_args)
    check_eval_metric(cfg, method)
    check_loader_options(cfg)
    perturbation = build_perturbation(cfg.perturbation)
    dist = Dist.from_env()
    dist.check_divides("batch", cfg.batch)
    device = dist.device(cfg.device)
    check_copies_fit(cfg, method, dist, device)
    out = check_out_dir(cfg)
    lock = RunDirLock(out)  # held from creation to the end (released by train())
    ckpt = checkpointing.load_for_resume(cfg, out, cfg.record(method.hparams()), dist)
    dist.init(device)
    try:
        if splits is None:
            if dist.distributed and not dist.main:
                dist.barrier()  # rank 0 decodes an archive into the cache first; the others then read it
            splits = load_splits(cfg)
            if dist.distributed and dist.main:
                dist.barrier()
        run = build_run(cfg, method=method, perturbation=perturbation, dist=dist, device=device,
                        out=out, splits=splits, lock=lock)
        if dist.main:  # created only once the data, model and method are known to be good
            ensure_writable_dir(out)
            lock.acquire()
        if ckpt is not None:
            checkpointing.restore(run, ckpt)
    except BaseException:
        lock.release()
        dist.close()
        raise
    return run


def check_copies_fit(cfg: TrainConfig, method: Method, dist: Dist, device: torch.device) -> None:
    """Fail fast, before any data or file, when a method's noisy copies per forward (MaxUp's
    scoring pass, the multi-noise methods' replicated batches) cannot fit in memory."""
    from robustmaxup.data import get_info
    from robustmaxup.runtime.checks import check_int
    from robustmaxup.runtime.limits import MAX_NOISE_DRAWS, batch_bytes, check_memory

    copies = getattr(method, "copies", None)
    if copies is None:
        return
    check_int("copies", copies, minimum=1, maximum=MAX_NOISE_DRAWS)
    per_rank = max(1, cfg.batch // dist.world)
    need = batch_bytes(per_rank * copies, get_info(cfg.dataset).image_shape)
    check_memory("copies", need, device, what=f"{per_rank} examples x {copies} copies in one forward")


def train(cfg: TrainConfig, splits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train according to ``cfg``; return ``{"out", "metrics" (the last epoch's), "best",
    "history"}``. Writes ``config.json``, ``metrics.jsonl``, ``last.pt`` and ``best.pt`` to
    ``cfg.out``. ``splits`` as in :func:`setup`."""
    run = setup(cfg, splits)
    try:
        return _fit(run)
    except BaseException:
        if run.dist.main:
            _discard_unstarted(run)
        raise
    finally:
        run.close()


def _discard_unstarted(run: Run) -> None:
    """After a failure (divergence, Ctrl-C, SIGTERM, a bad value) before the first checkpoint of
    a run that began in an empty directory: remove what it wrote (config.json, metrics.jsonl,
    and the directory if it made it), so the same command can simply be run again. A run with a
    checkpoint keeps everything: ``--resume`` continues it."""
    if not run.lock.started_empty or (run.out / "last.pt").exists():
        return
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (run.out / name).unlink()
    log.info("removed the unfinished run's files (no checkpoint was written) from %s", shown(run.out))
    if not run.lock.existed:
        run.lock.release()
        with contextlib.suppress(OSError):
            run.out.rmdir()


def _fit(run: Run) -> dict[str, Any]:
    cfg, state, main = run.cfg, run.state, run.dist.main
    if main:
        checkpointing.begin_session(run, provenance(run.device))
        checkpointing.write_metrics(run.out, state.history)  # the checkpoint's record is the log
    if main and state.epoch < cfg.epochs:
        log.info("training %s with %s on %s (%d train / %d val images), %s, %d process(es)",
                 cfg.arch, cfg.method, cfg.dataset, len(run.splits["train"]),
                 len(run.splits["val"]) if run.splits["val"] is not None else 0, run.device, run.dist.world)
        if not run.splits["val"]:
            log.info("no validation images (val_size 0): best.pt is not written; use last.pt")
        if cfg.recipe:
            val = run.splits["val"]
            log.info("%s", recipes.run_differences(cfg.recipe, bf16=run.bf16, held_out=len(val) if val else 0,
                                                   changed=sorted(recipe_overrides(run.record))))
    for epoch in range(state.epoch, cfg.epochs):
        metrics = train_epoch(run, epoch, progress=main and not cfg.quiet)
        t_eval = time.perf_counter()
        metrics.update(epoch=epoch + 1, lr=lr_at(cfg, epoch), val=evaluate(run, "val"), test=evaluate(run, "test"))
        metrics.update(eval_seconds=time.perf_counter() - t_eval, metric=run.metric)
        if not math.isfinite(metrics["loss"]):
            raise FieldError("lr", f"may be too high (now {lr_at(cfg, epoch):g}): training diverged at "
                                   f"epoch {epoch + 1} (loss {metrics['loss']}); lower it, or whichever "
                                   "strength you raised (weight decay, a method's loss weight, a weight "
                                   "perturbation's size)")
        state.epoch = epoch + 1
        state.history.append(checkpointing.clean_metrics(metrics))
        checkpointing.save(run, metrics)
        if main:
            _log_epoch(run, metrics)
    return {"out": str(run.out), "metrics": state.history[-1] if state.history else {},
            "best": state.best, "history": list(state.history)}


def _log_epoch(run: Run, m: Mapping[str, Any]) -> None:
    def score(v: float) -> str:   # an empty split scores nan: shown as "-"
        return "-" if math.isnan(v) else f"{v:.3f}"

    log.info("epoch %d/%d  loss %.4f  train acc %.3f  val %s  test %s  (%s)  %.0f img/s  lr %.4g  "
             "%.1fs + eval %.1fs", m["epoch"], run.cfg.epochs, m["loss"], m["train_acc"], score(m["val"]),
             score(m["test"]), m["metric"], m["img_per_s"], m["lr"], m["epoch_seconds"], m["eval_seconds"])


# --- one epoch -----------------------------------------------------------------------------------

def train_epoch(run: Run, epoch: int, progress: bool = False) -> dict[str, float]:
    """One pass over this rank's shard of (0-based) ``epoch``; statistics stay on the device
    until the epoch ends, then are summed over ranks. ``progress``: show it
    (:class:`~robustmaxup.runtime.progress.Progress`: a bar on a terminal, else a log line at most
    once a minute)."""
    cfg, method = run.cfg, run.method
    loader = run.loaders["train"]
    loader.set_epoch(epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch)
    method.on_epoch_start(epoch, cfg.epochs)
    if run.perturbation is not None:
        run.perturbation.on_epoch_start(epoch, cfg.epochs)
    run.model.train()
    zero = lambda: torch.zeros((), device=run.device, dtype=torch.float64)  # noqa: E731
    stats = {"loss": zero(), "correct": zero(), "seen": zero(), "count": zero()}
    t0 = time.perf_counter()
    for x, y in _progress(loader, f"epoch {epoch + 1}/{cfg.epochs}", progress):
        if run.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        for n, out in train_batch(run, x, y):
            stats["loss"] += out.loss.detach().double() * n
            stats["seen"] += n
            if out.logits is not None:
                stats["correct"] += (out.logits.argmax(1) == out.targets).sum()
                stats["count"] += len(out.targets)
    keys = sorted(stats)
    totals = dict(zip(keys, run.dist.all_reduce_sum(torch.stack([stats[k] for k in keys])).tolist()))
    seconds = time.perf_counter() - t0
    return {
        "loss": totals["loss"] / totals["seen"] if totals["seen"] else float("nan"),
        "train_acc": totals["correct"] / max(totals["count"], 1),
        "img_per_s": totals["seen"] / seconds,
        "epoch_seconds": seconds,
    }


def steps_per_batch(cfg: TrainConfig, method: Method) -> int:
    """Optimiser steps per loader batch: the method's reference chunks, or 1 (``"joint"``)."""
    return method.reference_chunks() if cfg.step_structure == "reference" else 1


def train_batch(run: Run, x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, LossOutput]]:
    """One loader batch: :func:`steps_per_batch` optimiser steps, each on the next
    ``len(y) // steps`` examples (a remainder is dropped, as in the reference code); returns
    ``(examples, output)`` of each step."""
    chunks = steps_per_batch(run.cfg, run.method)
    if chunks == 1:
        return [(len(y), train_step(run, x, y))]
    size = len(y) // chunks
    return [(size, train_step(run, x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]))
            for i in range(chunks)]


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
    """One optimiser step of the method on batch ``(x, y)`` (already on the run's device),
    inside the weight perturbation if there is one: the optimiser steps after the perturbation
    is removed, or at the perturbed weights if the perturbation says so (AWP's reference order,
    :attr:`~robustmaxup.methods.WeightPerturbation.step_at_perturbed`)."""
    method, model = run.method, run.forward
    with run.autocast:
        prepared = method.prepare(model, x, y, generator=run.state.generator)
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    step_inside = False
    if run.perturbation is not None:
        def loss_fn() -> torch.Tensor:
            with run.autocast:
                return method.loss(run.model, prepared).loss
        context = run.perturbation.perturbed(run.model, loss_fn)
        step_inside = run.perturbation.step_at_perturbed
    run.optimizer.zero_grad(set_to_none=True)
    with context:
        with run.autocast:
            out = check_loss_output(method, method.loss(model, prepared))
        out.loss.backward()
        if step_inside:
            run.optimizer.step()
    if not step_inside:
        run.optimizer.step()
    return out


def check_loss_output(method: Method, out: Any) -> LossOutput:
    """``out`` if it is what ``Method.loss`` promises (a :class:`LossOutput` with a scalar loss,
    and logits ``[B, K]`` with hard targets ``[B]`` or neither); else one UserError naming the
    method, not a traceback from deep in the loop. Shape checks only: no device sync."""
    where = f"method {method.name}'s loss()"
    if not isinstance(out, LossOutput):
        raise UserError(f"{where} returned a {type(out).__name__}; it must return "
                        "LossOutput(loss, logits, targets) (robustmaxup.methods.base)")
    if not isinstance(out.loss, torch.Tensor) or out.loss.dim() != 0:
        shape = tuple(out.loss.shape) if isinstance(out.loss, torch.Tensor) else type(out.loss).__name__
        raise UserError(f"{where} returned a loss of shape {shape}; it must be a scalar (e.g. the mean)")
    if (out.logits is None) != (out.targets is None):
        raise UserError(f"{where} returned logits without targets or targets without logits; give both "
                        "(for the train accuracy) or neither")
    if out.logits is not None and (out.logits.dim() != 2 or out.targets.shape != out.logits.shape[:1]):
        raise UserError(f"{where} returned logits {tuple(out.logits.shape)} and targets "
                        f"{tuple(out.targets.shape)}; they must be [B, K] and hard labels [B]")
    return out


def _progress(iterable: Iterable, desc: str, enabled: bool) -> Iterator:
    """``iterable``'s items, with :class:`~robustmaxup.runtime.progress.Progress` shown."""
    with Progress(len(iterable), desc=desc, unit="batch", enabled=enabled) as bar:  # type: ignore[arg-type]
        for item in iterable:
            yield item
            bar.update(1)


def evaluate(run: Run, name: str) -> float:
    """Mean of ``method.evaluate`` over split ``name`` (``"val"`` or ``"test"``; NaN if the run
    has none), in eval mode, with noise from the fixed stream ``eval.<name>`` so the metric is
    comparable across epochs. Every rank evaluates the whole split; cheap by design. With
    ``cfg.eval_radius`` (smoothing methods): :func:`certified_accuracy` instead."""
    loader = run.loaders.get(check_choice("name", name, ("val", "test")))
    if loader is None:
        return float("nan")
    gen = stream_generator(run.cfg.seed, f"eval.{name}", device=run.device)
    if run.cfg.eval_radius is not None:
        return certified_accuracy(run, loader, gen)
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


def certified_accuracy(run: Run, loader: Iterable, generator: torch.Generator) -> float:
    """Certified accuracy at ``cfg.eval_radius`` over ``loader``'s images: the share whose true
    label :meth:`Smooth.certified_correct <robustmaxup.certify.Smooth.certified_correct>`
    certifies from ``cfg.eval_n`` noisy copies at ``cfg.eval_alpha`` (noise from
    ``generator``). Costs ``eval_n`` forward passes per image, in batches of ``eval_batch``."""
    cfg = run.cfg
    smooth = Smooth(run.model, run.splits["train"].info.num_classes, float(run.method.hparams()["sigma"]),
                    precision=cfg.precision, channels_last=False)  # the model keeps its own layout
    per_call = max(1, cfg.eval_batch // min(cfg.eval_n, smooth.noise_chunk))
    hits, count = 0, 0
    for x, y in loader:
        for i in range(0, len(y), per_call):
            xs, ys = x[i:i + per_call], y[i:i + per_call]
            hits += int(smooth.certified_correct(xs, ys, cfg.eval_radius, cfg.eval_n, cfg.eval_alpha,
                                                 cfg.eval_batch, [generator] * len(ys)).sum())
            count += len(ys)
    return hits / max(count, 1)
