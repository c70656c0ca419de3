"""A run directory's files: ``last.pt`` (every epoch), ``best.pt`` (best validation epoch),
``metrics.jsonl`` (one line per epoch) and ``config.json``.

The checkpoint is the record: it holds every done epoch's metrics (``history``), and
``metrics.jsonl`` is rewritten from it (atomically) after each checkpoint and when a run
resumes, so a kill between the two writes cannot lose or duplicate an epoch line.

A resumed run must have been made with the same result-defining settings
(:func:`robustmaxup.runtime.records.check_resume`; ``epochs``, ``device``, ``workers``, ``out``
and the like may change) and the same number of processes. Each call that trains records a
*session* (the epoch it started from, the settings a resume may change, and its provenance: git
SHA, dirty flag, versions, hardware, time), kept in the checkpoint and listed in ``config.json``,
so a run trained over several calls says what made each part of it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from robustmaxup.checkpoints import read_checkpoint, save_checkpoint
from robustmaxup.errors import UserError, ref
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.faults import fault_point
from robustmaxup.runtime.io import atomic_write_json, atomic_write_text, shown
from robustmaxup.runtime.text import error_summary
from robustmaxup.runtime.records import check_resume, session
from robustmaxup.train.config import (
    EPOCH_RELATIVE_SCHEDULES, RESUMABLE_CHANGES, TrainConfig, lr_at, recipe_overrides, upgrade_record,
)
from robustmaxup.train.state import Run

log = logging.getLogger(__name__)

__all__ = ["LAST", "BEST", "METRICS", "CONFIG", "SESSION_SETTINGS", "load_for_resume", "restore", "save",
           "begin_session", "write_config", "write_metrics", "read_metrics", "clean_metrics"]

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.json"


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with NaN as None (JSON has no NaN; "no validation split" reads as null)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


# --- resuming ------------------------------------------------------------------------------------

def load_for_resume(cfg: TrainConfig, out: Path, record: Mapping[str, Any], dist: Dist) -> dict[str, Any] | None:
    """``last.pt`` of ``out`` when resuming (None for a fresh run, or a resumed one that never
    finished an epoch), after checking it was made with the same settings (``record``: the
    current :meth:`TrainConfig.record`) and as many processes."""
    path = out / LAST
    if not cfg.resume:
        return None
    if not path.exists():
        if dist.main:
            log.info("%s: %s holds no last.pt yet; starting the run from epoch 1", ref("resume", True), shown(out))
        return None
    ckpt = read_checkpoint(path)
    if "history" not in ckpt:  # robustmaxup.engine's checkpoints: other seed streams, nested config
        raise UserError(f"cannot resume run directory {shown(out)}: its last.pt was written by an older "
                        "robustmaxup, which drew the training subset and validation hold-out "
                        "differently; start a new run")
    _check_resumable(ckpt, out)
    if ckpt["epoch"] > cfg.epochs:
        raise UserError(f"cannot resume run directory {shown(out)}: it has {ckpt['epoch']} epochs done, "
                        f"more than the {cfg.epochs} asked for; ask for {ckpt['epoch']} epochs or more")
    saved = upgrade_record(ckpt.get("config") or {})
    keys = sorted((set(saved) | set(record)) - RESUMABLE_CHANGES)
    check_resume(saved, record, keys, what=f"run directory {out}", arguments=keys)  # flat names: flags
    made_with = len(ckpt["rng"]["generators"])
    if made_with != dist.world:
        raise UserError(f"cannot resume run directory {out}: it was made with {made_with} process(es), "
                        f"now {dist.world}; launch as many")
    _warn_stretched_schedule(cfg, saved, dist)
    return ckpt


def _warn_stretched_schedule(cfg: TrainConfig, saved: Mapping[str, Any], dist: Dist) -> None:
    """A resume may change ``epochs`` (to extend a run); the schedules that scale with the run's
    length then give the remaining epochs other rates than the first call planned."""
    was = saved.get("epochs")
    if dist.main and cfg.schedule in EPOCH_RELATIVE_SCHEDULES and was is not None and was != cfg.epochs:
        log.warning("%s with %s instead of %d: the %s schedule is stretched over the new length, so the "
                    "remaining epochs get other learning rates than the first run planned",
                    ref("resume", True), ref("epochs", cfg.epochs), was, cfg.schedule)


def _check_resumable(ckpt: Mapping[str, Any], out: Path) -> None:
    """UserError unless ``ckpt`` holds the training state a resume reads, with its types."""
    rng = ckpt.get("rng")
    problems = [
        ("history", isinstance(ckpt.get("history"), list)
         and all(isinstance(m, dict) for m in ckpt["history"])),
        ("config", isinstance(ckpt.get("config"), (dict, type(None)))),
        ("optimizer", isinstance(ckpt.get("optimizer"), dict)),
        ("epoch", isinstance(ckpt.get("epoch"), int) and not isinstance(ckpt.get("epoch"), bool)),
        ("rng", isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
         and isinstance(rng.get("generators"), list) and len(rng["generators"]) > 0
         and all(isinstance(g, torch.Tensor) for g in rng["generators"])),
        ("best", isinstance(ckpt.get("best"), (dict, type(None)))),
    ]
    bad = [key for key, ok in problems if not ok]
    if bad:
        raise UserError(f"cannot resume run directory {shown(out)}: its last.pt has no valid {bad[0]}; "
                        "it is damaged or not a checkpoint of robustmaxup train")


def restore(run: Run, ckpt: Mapping[str, Any]) -> None:
    """Load model, optimiser, RNG states and the training state of ``ckpt`` into ``run``
    (UserError if they do not fit the run)."""
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        run.state.generator.set_state(ckpt["rng"]["generators"][run.dist.rank])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = error_summary(e, 200)
        raise UserError(f"cannot resume run directory {shown(run.out)}: its last.pt does not fit this "
                        f"run ({first})") from None
    run.state.epoch = int(ckpt["epoch"])
    run.state.best = ckpt.get("best")
    run.state.history = [dict(m) for m in ckpt["history"]]
    run.state.sessions = [dict(s) for s in ckpt.get("sessions", [])]  # older checkpoints hold none
    if run.state.epoch >= run.cfg.epochs:
        log.info("%s is complete (%d of %d epochs); nothing to do", shown(run.out), run.state.epoch,
                 run.cfg.epochs)
    else:
        log.info("resuming %s after epoch %d of %d", shown(run.out), run.state.epoch, run.cfg.epochs)


# --- saving ----------------------------------------------------------------------------------------

def _generator_states(run: Run) -> list[torch.Tensor]:
    """Every rank's noise-generator state, in rank order (a collective under DDP)."""
    state = run.state.generator.get_state()
    if not run.dist.distributed:
        return [state]
    gathered = run.dist.all_gather(state.to(run.device))  # NCCL gathers device tensors, gloo host ones
    return [g.cpu() for g in gathered]


def _checkpoint(run: Run, metrics: Mapping[str, Any]) -> dict[str, Any]:
    cfg, info, epoch = run.cfg, run.splits["train"].info, run.state.epoch
    spec = cfg.perturbation
    return {
        "arch": cfg.arch, "dataset": cfg.dataset, "num_classes": info.num_classes,
        "classes": [str(c) for c in run.splits["train"].classes],
        "in_channels": info.image_shape[0], "mean": list(info.mean), "std": list(info.std),
        "method": cfg.method, "hparams": run.method.hparams(),
        "perturbation": spec.name if spec else None, "perturbation_args": dict(spec.args) if spec else {},
        "epoch": epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": {"schedule": cfg.schedule, "lr": lr_at(cfg, max(epoch - 1, 0))},
        "rng": {"torch": torch.get_rng_state(), "generators": _generator_states(run)},
        "config": dict(run.record), "metrics": dict(metrics), "history": list(run.state.history),
        "best": run.state.best, "selection": "last epoch", "sessions": list(run.state.sessions),
    }


def save(run: Run, metrics: Mapping[str, Any]) -> None:
    """Checkpoint the epoch just done (``run.state`` already counts it, ``metrics`` in its
    history): ``best.pt`` if validation improved, then ``last.pt``, then ``metrics.jsonl``.
    Every rank calls it (the generator states are gathered); rank 0 writes."""
    ckpt = _checkpoint(run, metrics)
    if not run.dist.main:
        return
    state, val = run.state, metrics.get("val")
    if val is not None and not math.isnan(val) and (state.best is None or val > state.best["value"]):
        state.best = {"epoch": state.epoch, "value": val, "metric": f"validation {run.metric}",
                      "val_size": len(run.splits["val"])}
        ckpt["best"] = state.best
        save_checkpoint(run.out / BEST, {**ckpt, "selection": f"best {state.best['metric']} on "
                        f"{state.best['val_size']} held-out training images, epoch {state.epoch}"})
        fault_point("train.best")
    save_checkpoint(run.out / LAST, ckpt)
    fault_point("train.checkpoint")
    write_metrics(run.out, state.history)
    fault_point("train.metrics")


# --- the run directory's text files ----------------------------------------------------------------

def write_metrics(out: Path, history: list[Mapping[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` (atomically) with one JSON line per epoch of ``history``."""
    atomic_write_text(out / METRICS, "".join(json.dumps(clean_metrics(m)) + "\n" for m in history))


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``metrics.jsonl`` (up to the first unreadable line; [] if absent)."""
    path = Path(out) / METRICS
    lines: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                break
    return lines


#: The settings a resume may change that each session records (with its provenance).
SESSION_SETTINGS = ("epochs", "device", "workers")


def begin_session(run: Run, provenance: Mapping[str, Any]) -> None:
    """Rank 0, before training: add this call to ``run.state.sessions`` (``{"from_epoch", the
    :data:`SESSION_SETTINGS`, "provenance"}``; checkpointed with every epoch) and write
    ``config.json``. A call with nothing left to train (a finished run resumed) adds no session
    and leaves an existing ``config.json`` as it is."""
    state, cfg = run.state, run.cfg
    if state.epoch >= cfg.epochs and (run.out / CONFIG).exists():
        return
    if state.epoch < cfg.epochs:
        state.sessions.append(session(provenance, from_epoch=state.epoch,
                                      **{k: run.record.get(k) for k in SESSION_SETTINGS}))
    write_config(run, provenance)


def write_config(run: Run, provenance: Mapping[str, Any]) -> None:
    """``config.json``: the flat config (flag names, method defaults resolved: every value of a
    run made from a ``recipe`` too), ``recipe_overrides`` (the recipe's values that were given
    otherwise, ``{key: {"recipe": ..., "value": ...}}``; empty without a recipe), the provenance
    of the call that wrote it, and ``sessions``: every call that trained the run, oldest first
    (the epochs before the first one listed were trained by a version that kept no sessions)."""
    atomic_write_json(run.out / CONFIG, {**run.record, "recipe_overrides": recipe_overrides(run.record),
                                         "provenance": dict(provenance), "sessions": list(run.state.sessions)})
    fault_point("train.config")
