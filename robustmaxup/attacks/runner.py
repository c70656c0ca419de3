"""Empirical robust accuracy of a model on a dataset: chunked, resumable, with the files that
``robustmaxup attack`` writes. The command line only parses; this is the work.

Example::

    from robustmaxup.attacks import AttackConfig
    from robustmaxup.attacks.runner import evaluate_dataset
    from robustmaxup.data import load_split, spread_indices

    split = load_split("cifar10", "test", root="data/cifar10")
    summary = evaluate_dataset(model, split, spread_indices(len(split), 1000).tolist(),
                               AttackConfig(eps=8/255, attack="pgd", steps=20, batch_size=500),
                               seed=0, out="pgd.json")
    print(summary.robust_accuracy)

Outputs, written atomically once the run is complete (none when ``out`` is None):

- ``out`` (JSON): clean and robust accuracy, robust accuracy after each attack (cumulative), n,
  eps, norm, version, the re-scoring statistics, timings, versions, git SHA and device, and the
  caller's ``extra_record`` (the CLI adds the checkpoint's path, hash and metadata).
- ``out`` with suffix ``.tsv``: one row per example, ``idx label clean_correct robust_correct``,
  then ``robust_after_<attack>`` per attack and ``rescore_correct`` (the fraction of the
  re-scorings of x_adv that classify it correctly).
- ``save_adv``: ``{"x_adv", "labels", "indices", "robust", ...}`` (torch file).
- ``out`` with suffix ``.autoattack.log``: pyautoattack's own log, appended to; each run opens its
  part with a ``=== robustmaxup attack: run started ...`` line.

Output safety: the files are checked before anything runs (writable, distinct, and -- by the
CLI -- never the checkpoint or the data root); a run holds ``OUT.lock`` (an ``flock``, released
with the process) so two runs on one output never interleave; ``resume`` continues only files
this command wrote (:meth:`AttackPaths.check_ours`), touching nothing otherwise. Each write
boundary is a named fault point (:mod:`robustmaxup.runtime.faults`). ``steps``, ``copies`` and
``rescores`` are capped and a batch that cannot fit in memory is refused
(:func:`check_memory_for`).

Robust accuracy is the POINTWISE worst case: an example counts as robust only if it survives
every attack and every re-scoring of its x_adv (never a mean over attacks).

Resuming: the examples are processed in chunks of ``config.batch_size``; after each chunk its
:class:`ChunkRecord` (and x_adv with ``save_adv``) goes atomically to ``OUT.state.pt``.
``resume=True`` continues from the last finished chunk, and on a finished run checks that the
settings are those that made it (:data:`RESUME_KEYS`, through
:func:`robustmaxup.runtime.records.check_resume`) before reporting it complete.

Seeding (see :mod:`robustmaxup.attacks.evaluation`): PGD's random starts, the smoothing noise
during PGD and the re-scoring noise are drawn per example from generators seeded by
``(seed, dataset index)``, so PGD results do not depend on ``batch_size`` (up to the model's
floating-point kernels, which some backends choose by batch size); AutoAttack is seeded once per
chunk from the chunk's first dataset index, so its results depend on ``batch_size``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from robustmaxup.attacks.evaluation import AttackConfig, check_config, evaluate
from robustmaxup.data import check_indices, check_split, spread_indices
from robustmaxup.errors import UserError, ref
from robustmaxup.models.probe import CLEAN_CHECK_IMAGES, clean_accuracy, log_clean_accuracy
from robustmaxup.models.state import input_dtype
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.faults import fault_point
from robustmaxup.runtime.progress import Progress
from robustmaxup.runtime.io import (
    FileLock, atomic_torch_save, atomic_write_json, atomic_write_text, check_distinct,
    check_output_path, ensure_writable_dir, shown,
)
from robustmaxup.runtime.limits import ACTIVATION_FACTOR, batch_bytes, check_memory
from robustmaxup.runtime.records import check_resume, provenance, session
from robustmaxup.runtime.seeds import check_seed

log = logging.getLogger(__name__)

#: settings that define the results: a resume (of a partial or a finished run) with other values
#: is refused. ``checkpoint_sha256`` comes from the caller's ``extra_record``. (The record's ``n``
#: and ``batch`` are not compared: ``indices`` and ``attack_config.batch_size`` say the same.)
RESUME_KEYS = ("checkpoint_sha256", "model_sha256", "dataset", "split", "indices", "attack_config",
               "seed", "seed_rule", "save_adv")
#: the recorded settings a user sets (the attack config's too), named as arguments in a refused resume
ARGUMENTS = ("dataset", "split", "seed", "save_adv", "eps", "attack", "norm", "version", "attacks", "steps",
             "step_size", "batch_size", "sigma", "copies", "rescores")
STATE_FORMAT = "robustmaxup.attack.state/2"
SEED_RULE = ("per example: PGD start and smoothing noise from stream attack.example, re-scoring "
             "noise from stream attack.rescore, each runtime.seeds.stream_seed(seed, stream, dataset "
             "index); AutoAttack: one seed per chunk, stream attack.batch of the chunk's first index")


# ----------------------------------------------------------------------------- files
TSV_HEAD, TSV_TAIL = ("idx", "label", "clean_correct", "robust_correct"), "rescore_correct"
ADV_KEYS = ("x_adv", "labels", "indices", "robust")


@dataclass(frozen=True)
class AttackPaths:
    """Where a run's files go: the JSON ``out`` and everything named after it (the lock file
    ``OUT.lock`` exists only while a run holds it, or after a kill)."""

    json: Path
    tsv: Path
    state: Path
    aa_log: Path
    adv: Path | None
    lock: Path

    @classmethod
    def for_output(cls, out: str | os.PathLike, save_adv: str | os.PathLike | None = None) -> "AttackPaths":
        """The paths of a run writing JSON ``out`` (TSV, state, log and lock beside it); checks
        that each can be written and that they are distinct files, creating nothing."""
        out = check_output_path(out, "out")
        if out.suffix == ".tsv":
            raise FieldError("out", f"{shown(out)} names the TSV; name the JSON file, the TSV goes beside it")
        adv = check_output_path(save_adv, "save_adv") if save_adv is not None else None
        tsv = out.with_suffix(".tsv") if out.suffix == ".json" else out.with_name(out.name + ".tsv")
        base = out.with_suffix("") if out.suffix == ".json" else out
        paths = cls(out, tsv, out.with_name(out.name + ".state.pt"),
                    base.with_name(base.name + ".autoattack.log"), adv, out.with_name(out.name + ".lock"))
        for name, path in paths.named()[1:]:
            check_output_path(path, name)
        check_distinct(paths.named(), paths.described())
        return paths

    def named(self) -> list[tuple[str, Path]]:
        """``(field, path)`` of every file a run writes (for messages and input checks)."""
        files = [("out", self.json), ("out", self.tsv), ("out", self.state), ("out", self.aa_log),
                 ("out", self.lock)]
        return files + ([("save_adv", self.adv)] if self.adv else [])

    def described(self) -> dict[str, str]:
        """Words for the files written beside ``out`` (for messages)."""
        return {str(self.json): "the out file", str(self.tsv): "the per-example TSV written beside out",
                str(self.state): "the resume state written beside out",
                str(self.aa_log): "the AutoAttack log written beside out",
                str(self.lock): "the lock file written beside out"}

    def outputs(self) -> list[Path]:
        return [self.json, self.tsv] + ([self.adv] if self.adv else [])

    def snapshot(self) -> list[tuple[str, int, int]]:
        """``(path, size, mtime)`` of the run's existing files (not the lock)."""
        out = []
        for p in self.outputs() + [self.state]:
            with contextlib.suppress(OSError):
                st = p.stat()
                out.append((str(p), st.st_size, st.st_mtime_ns))
        return out

    def check_fresh(self, resume: bool) -> None:
        """UserError if a run's files exist and ``resume`` is off (they are never overwritten);
        with ``resume``, UserError unless every existing one is a file of this command
        (:meth:`check_ours`)."""
        if resume:
            self.check_ours()
            return
        existing = [p for p in self.outputs() + [self.state] if p.exists()]
        if existing:
            which = ref("save_adv" if existing[0] == self.adv else "out")
            if not (self.json.exists() or self.state.exists()):  # no run here to resume
                raise UserError(f"{shown(existing[0])} already exists and is never overwritten; choose "
                                f"another output ({which})")
            raise UserError(f"{shown(existing[0])} already exists; resume the run ({ref('resume', True)}) "
                            f"to continue or re-check it, or choose another output ({which})")

    def check_ours(self) -> None:
        """UserError, touching nothing, unless every existing output is one ``robustmaxup attack``
        writes: the JSON a result of this command, the TSV with its header, ``save_adv`` its
        tensors, the state file its format (read fully later, by the resume)."""
        if self.json.exists():
            try:
                record = json.loads(self.json.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                record = None
            if not isinstance(record, dict) or record.get("command") != "attack":
                raise UserError(f"{shown(self.json)} is not a result of robustmaxup attack; cannot "
                                "resume it; choose another output")
        if self.tsv.exists() and not _is_attack_tsv(self.tsv):
            raise UserError(f"{shown(self.tsv)} is not the per-example TSV of robustmaxup attack "
                            f"(header {chr(9).join(TSV_HEAD)}...); choose another output")
        if self.adv is not None and self.adv.exists():
            try:
                adv = torch.load(self.adv, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - unreadable: not ours
                adv = None
            if not isinstance(adv, dict) or not all(k in adv for k in ADV_KEYS):
                raise UserError(f"{shown(self.adv)} is not an x_adv file of robustmaxup attack; "
                                f"choose another {ref('save_adv')}")
        if self.state.exists():
            _read_state(self.state)


def _is_attack_tsv(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(65536).split(b"\n", 1)[0].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    cols = head.split("\t")
    return (tuple(cols[:4]) == TSV_HEAD and cols[-1] == TSV_TAIL
            and all(c.startswith("robust_after_") for c in cols[4:-1]))


def check_memory_for(config: AttackConfig, image_shape: Sequence[int], examples: int,
                     device: torch.device | str) -> None:
    """FieldError if one attack batch cannot fit on ``device``: ``min(batch_size, examples)``
    inputs (times ``m`` noise draws for a smoothed model) go through the network with
    gradients, so their activations are kept (a lower bound, checked before allocating)."""
    b = max(1, min(config.batch_size, examples))
    draws = config.copies if config.randomized else 1
    field = "copies" if draws > b else "batch_size"
    need = batch_bytes(b * draws, image_shape, factor=1 + 2 * ACTIVATION_FACTOR)
    check_memory(field, need, device, what=f"{b} examples x {draws} noise draws with gradients")


# ----------------------------------------------------------------------------- records
@dataclass
class ChunkRecord:
    """Per-example outcome of a run of examples (one chunk, or the whole run after
    :meth:`concat`), in evaluation order; tensors on the CPU.

    Attributes:
        indices: int64 ``[b]`` dataset index of each example; labels: int64 ``[b]``.
        clean: bool ``[b]`` correct before any attack.
        stages: ordered ``attack -> bool [b]``, robust after that attack and every earlier one.
        rescored: bool ``[R, b]``, each re-scoring of x_adv correct.
        seconds: wall time of the chunk; attack_seconds: per attack.
        x_adv: ``[b, C, H, W]`` when kept (``save_adv``), else None.
    """

    indices: Tensor
    labels: Tensor
    clean: Tensor
    stages: dict[str, Tensor]
    rescored: Tensor
    seconds: float = 0.0
    attack_seconds: dict[str, float] = field(default_factory=dict)
    x_adv: Tensor | None = None

    @property
    def robust(self) -> Tensor:
        """bool ``[b]``: clean, survived every attack and every re-scoring (the verdict)."""
        flags = list(self.stages.values())[-1] if self.stages else self.clean
        return flags & self.rescored.all(0)

    def __len__(self) -> int:
        return len(self.indices)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers, for ``torch.save`` and ``torch.load(weights_only=True)``."""
        return {"indices": self.indices, "labels": self.labels, "clean": self.clean,
                "stages": dict(self.stages), "rescored": self.rescored, "seconds": float(self.seconds),
                "attack_seconds": dict(self.attack_seconds), "x_adv": self.x_adv}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "ChunkRecord":
        rec = cls(**{k: d[k] for k in ("indices", "labels", "clean", "stages", "rescored", "seconds",
                                       "attack_seconds", "x_adv")})
        b = len(rec.indices)
        shapes_ok = (len(rec.labels) == b and len(rec.clean) == b and rec.rescored.shape[1] == b
                     and all(len(v) == b for v in rec.stages.values())
                     and (rec.x_adv is None or len(rec.x_adv) == b))
        if not shapes_ok:
            raise ValueError("inconsistent chunk record")
        return rec

    @classmethod
    def concat(cls, chunks: Sequence["ChunkRecord"]) -> "ChunkRecord":
        """One record of several, in order (``x_adv`` kept only if every chunk has it)."""
        names = list(chunks[0].stages)
        cat = lambda key: torch.cat([getattr(c, key) for c in chunks])  # noqa: E731
        advs = [c.x_adv for c in chunks]
        return cls(indices=cat("indices"), labels=cat("labels"), clean=cat("clean"),
                   stages={n: torch.cat([c.stages[n] for c in chunks]) for n in names},
                   rescored=torch.cat([c.rescored for c in chunks], 1),
                   seconds=sum(c.seconds for c in chunks),
                   attack_seconds={n: sum(c.attack_seconds.get(n, 0.0) for c in chunks) for n in names},
                   x_adv=None if any(a is None for a in advs) else torch.cat(advs))

    def tsv(self) -> str:
        """The per-example table: ``idx label clean_correct robust_correct robust_after_<attack>...
        rescore_correct`` (a header line, then one row per example)."""
        names = list(self.stages)
        cols = ["idx", "label", "clean_correct", "robust_correct"] + [f"robust_after_{n}" for n in names]
        lines = ["\t".join(cols + ["rescore_correct"])]
        frac = self.rescored.float().mean(0)
        robust = self.robust
        for j in range(len(self)):
            row = [int(self.indices[j]), int(self.labels[j]), int(self.clean[j]), int(robust[j])]
            row += [int(self.stages[n][j]) for n in names]
            lines.append("\t".join(map(str, row)) + f"\t{frac[j].item():.4f}")
        return "\n".join(lines) + "\n"


@dataclass
class AttackSummary:
    """What :func:`evaluate_dataset` returns.

    Attributes:
        record: exactly the JSON written to ``out`` (read back from it for an already complete
            run).
        examples: the per-example outcome (None when a finished run was only re-checked).
        paths: the files (None without ``out``).
        already_complete: ``resume`` found the run finished under the same settings.
    """

    record: dict[str, Any]
    examples: ChunkRecord | None
    paths: AttackPaths | None = None
    already_complete: bool = False

    @property
    def clean_accuracy(self) -> float:
        return self.record["clean_accuracy"]

    @property
    def robust_accuracy(self) -> float:
        return self.record["robust_accuracy"]


# ----------------------------------------------------------------------------- the run
def model_sha256(model: nn.Module) -> str:
    """A hash of the model's state (names, dtypes, shapes and values of parameters and buffers)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _header(model: nn.Module, split: Any, idx: list[int], config: AttackConfig, *, seed: int,
            save_adv: bool, device: torch.device, extra: Mapping[str, Any]) -> dict[str, Any]:
    base = {
        "command": "attack",
        "model_sha256": model_sha256(model),
        "dataset": split.info.name, "split": getattr(split, "split", None), "split_size": len(split),
        "n": len(idx), "indices": idx,
        "batch": config.batch_size, "seed": seed, "save_adv": save_adv,
        "attack_config": config.as_used(),
        "attack": config.attack, "eps": config.eps, "norm": config.norm,
        "version": config.version if config.attack == "autoattack" else None,
        "smoothed": {"sigma": config.sigma, "copies": config.copies} if config.randomized else None,
        "randomized": config.randomized,
        "rescores": config.n_rescores,
        "seed_rule": SEED_RULE,
        "provenance": provenance(device),
    }
    return {**dict(extra), **base}


def _read_state(path: Path) -> dict[str, Any]:
    """The state file's dict; UserError (nothing touched) unless it is one of ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is the user's to remove
        raise UserError(f"cannot read the state file {shown(path)} ({type(e).__name__}); it is not "
                        "one of robustmaxup attack; remove it to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT \
            or not isinstance(state.get("header"), dict) or not isinstance(state.get("chunks"), dict):
        raise UserError(f"the state file {shown(path)} was written by another version of robustmaxup "
                        "(or is not a state file of robustmaxup attack); remove it to start over")
    return state


def _upgraded(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """``saved`` with its ``attack_config`` as this version records it (:meth:`AttackConfig.as_used`:
    earlier versions recorded the fields unresolved, and ``copies`` as ``m``), so an earlier run
    resumes; unchanged if it does not parse."""
    recorded = saved.get("attack_config")
    if not isinstance(recorded, Mapping):
        return saved
    if "m" in recorded and "copies" not in recorded:  # before the field was renamed copies
        recorded = {("copies" if k == "m" else k): v for k, v in recorded.items()}
    try:
        config = AttackConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    except TypeError:
        return saved
    return {**saved, "attack_config": config.as_used()}


def _load_state(path: Path, header: Mapping[str, Any],
                n_chunks: int) -> tuple[dict[int, ChunkRecord], list[dict[str, Any]]]:
    """The chunks done and the sessions that did them (none in state files of earlier versions)."""
    state = _read_state(path)
    check_resume(_upgraded(state["header"]), header, RESUME_KEYS, what=shown(path), arguments=ARGUMENTS)
    try:
        done = {int(c): ChunkRecord.from_state(d) for c, d in state["chunks"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        raise UserError(f"{path} is damaged; remove it to start over") from None
    if any(not 0 <= c < n_chunks for c in done):
        raise UserError(f"{path} does not fit this run's chunks; remove it to start over")
    sessions = state.get("sessions")
    return done, [dict(s) for s in sessions] if isinstance(sessions, list) else []


def _open_log_section(path: Path, done: int, total: int) -> None:
    """Append the line that opens this run's part of the AutoAttack log. The log is appended to,
    never truncated: an earlier run's lines (one stopped before its first chunk, or the chunks a
    resumed run already did) stay, marked off from this run's."""
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"=== robustmaxup attack: run started {started}; {done} of {total} chunks already done ===\n")


def _save_state(path: Path, header: Mapping[str, Any], done: Mapping[int, ChunkRecord]) -> None:
    atomic_torch_save({"format": STATE_FORMAT, "header": {k: header[k] for k in RESUME_KEYS if k in header},
                       "sessions": header["sessions"], "chunks": {c: r.to_state() for c, r in done.items()}},
                      path)


def _run_chunk(model: nn.Module, split: Any, idx: list[int], config: AttackConfig, *, seed: int,
               device: torch.device, log_file: Path | None, keep_adv: bool) -> ChunkRecord:
    x, y = split.batch(idx)
    x, y = x.to(device, dtype=input_dtype(model)), y.to(device)
    t0 = time.perf_counter()
    res = evaluate(model, x, y, config, seed=seed, indices=idx, log_file=log_file)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ChunkRecord(
        indices=torch.tensor(idx, dtype=torch.int64), labels=y.cpu(), clean=res.clean.cpu(),
        stages={k: v.cpu() for k, v in res.stages.items()}, rescored=res.rescored.cpu(),
        seconds=time.perf_counter() - t0, attack_seconds=dict(res.seconds),
        x_adv=res.x_adv.cpu() if keep_adv else None,
    )


def _summary(header: Mapping[str, Any], config: AttackConfig, chunks: list[ChunkRecord],
             all_: ChunkRecord, wall: float, paths: AttackPaths | None) -> dict[str, Any]:
    names = list(all_.stages)
    per_rescore = all_.rescored.double().mean(1)
    seconds = [c.seconds for c in chunks]
    return {
        **header,
        "attacks": names,
        "clean_accuracy": all_.clean.double().mean().item(),
        "robust_accuracy": all_.robust.double().mean().item(),
        "clean_correct": int(all_.clean.sum()), "robust_correct": int(all_.robust.sum()),
        "robust_accuracy_after": {n: all_.stages[n].double().mean().item() for n in names},
        "robust_accuracy_rule": "pointwise worst case: an example is robust only if it is clean-"
                                "correct, survives every attack and every re-scoring of its x_adv",
        "rescoring": {
            "repeats": int(all_.rescored.shape[0]),
            "accuracy_mean": per_rescore.mean().item(),
            "accuracy_std": per_rescore.std().item() if all_.rescored.shape[0] > 1 else 0.0,
            "accuracy_min": per_rescore.min().item(), "accuracy_max": per_rescore.max().item(),
            "note": ("randomized model: each re-scoring draws fresh noise; a single evaluation of "
                     "x_adv overstates robustness") if config.randomized else
                    "deterministic model: re-scoring x_adv reproduces the attack's verdict",
        },
        "timings": {"attack_seconds": sum(seconds), "wall_seconds_this_session": wall,
                    "seconds_per_chunk": seconds, "seconds_per_attack": dict(all_.attack_seconds),
                    "images_per_second": len(all_) / max(sum(seconds), 1e-9)},
        "outputs": {"tsv": str(paths.tsv) if paths else None,
                    "adv": str(paths.adv) if paths and paths.adv else None,
                    "autoattack_log": str(paths.aa_log) if paths and config.attack == "autoattack" else None},
    }


def _write_outputs(paths: AttackPaths, all_: ChunkRecord, summary: Mapping[str, Any]) -> None:
    atomic_write_text(paths.tsv, all_.tsv())
    fault_point("attack.tsv")
    if paths.adv is not None:
        atomic_torch_save({
            "x_adv": all_.x_adv, "labels": all_.labels, "robust": all_.robust,
            "indices": all_.indices.clone(), "eps": summary["eps"], "norm": summary["norm"],
            "attack_config": summary["attack_config"], "dataset": summary["dataset"],
            "split": summary["split"],
        }, paths.adv)
        fault_point("attack.adv")
    atomic_write_json(paths.json, summary)
    fault_point("attack.json")


def _finished(paths: AttackPaths, header: Mapping[str, Any]) -> AttackSummary:
    try:
        record = json.loads(paths.json.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"cannot read {shown(paths.json)} ({type(e).__name__}); remove it to start over") from None
    if not isinstance(record, dict):
        raise UserError(f"{paths.json} is not a result of robustmaxup attack; choose another output")
    check_resume(_upgraded(record), header, RESUME_KEYS + ("command",), what=str(paths.json),
                 arguments=ARGUMENTS)
    missing = [k for k in ("model_sha256", "seed_rule") if k not in record]
    if missing:  # made by an older version (other seeding) or not by this command
        raise UserError(f"cannot resume {paths.json}: it records no {', '.join(missing)}; it was made "
                        "by another version; choose another output")
    gone = [p for p in (paths.tsv, paths.adv) if p is not None and not p.exists()]
    if gone:
        raise UserError(f"{shown(paths.json)} is complete but {shown(gone[0])} is missing; rerun without "
                        f"{ref('resume')} after removing the run's other files, or choose another output")
    log.info("%s is complete (%s examples); nothing to do", shown(paths.json), record.get("n", "all"))
    return AttackSummary(record, None, paths, already_complete=True)


def _attack_chunks(model: nn.Module, split: Any, chunks: list[list[int]], done: dict[int, ChunkRecord],
                   config: AttackConfig, header: dict[str, Any], paths: AttackPaths | None, *,
                   seed: int, device: torch.device, progress: bool,
                   keep_adv: bool) -> tuple[dict[str, Any], ChunkRecord]:
    """Run the chunks not yet ``done`` (saving the state after each), then write the outputs
    and remove the state file; returns the summary and every example's record."""
    log_file = paths.aa_log if paths is not None and config.attack == "autoattack" else None
    t0 = time.perf_counter()
    bar = Progress(sum(len(c) for c in chunks), desc=f"attack {config.attack}", unit="img",
                   enabled=progress, initial=sum(len(r) for r in done.values()), first_after=1,
                   skip_first=False)
    with bar:
        for c, chunk in enumerate(chunks):
            if c in done:
                continue
            done[c] = _run_chunk(model, split, chunk, config, seed=seed, device=device,
                                 log_file=log_file, keep_adv=keep_adv)
            if paths is not None:
                _save_state(paths.state, header, done)
                fault_point("attack.chunk")
            robust = torch.cat([r.robust for r in done.values()]).float().mean()
            bar.update(len(chunk), note=f"robust accuracy so far {robust:.1%}")
    records = [done[c] for c in range(len(chunks))]
    all_ = ChunkRecord.concat(records)
    summary = _summary(header, config, records, all_, time.perf_counter() - t0, paths)
    if paths is not None:
        _write_outputs(paths, all_, summary)
        paths.state.unlink(missing_ok=True)
    return summary, all_


def evaluate_dataset(
    model: nn.Module,
    split: Any,
    indices: Sequence[int],
    config: AttackConfig,
    *,
    seed: int,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    save_adv: str | os.PathLike | None = None,
    progress: bool = True,
    extra_record: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> AttackSummary:
    """Attack ``model`` on the examples ``indices`` of ``split`` and report robust accuracy.

    Args:
        model: classifier on [0, 1] pixels (normalisation inside), already on ``device``.
        split: the data: anything with ``len``, ``.batch(indices) -> (x, y)`` (x in [0, 1]) and
            ``.info`` (``name``, ``image_shape``, ``num_classes``); ``.split`` (its name) if any:
            :func:`~robustmaxup.data.load_split`'s, or your own tensors through
            :meth:`~robustmaxup.data.ImageSplit.from_tensors`.
        indices: dataset indices to evaluate, in order (e.g. ``data.spread_indices``).
        config: what to run; ``config.batch_size`` is also the chunk size (unit of resume).
        seed: the run's seed (randomness per example: see the module docstring).
        out: the JSON to write (TSV, state and AutoAttack log beside it); None: no files.
        resume: continue ``out`` from its state file, or re-check a finished ``out`` (refused,
            touching nothing, if any of :data:`RESUME_KEYS` differs).
        save_adv: also save x_adv and the flags to this torch file (needs ``out``).
        progress: a progress bar on stderr (only when stderr is a terminal).
        extra_record: more entries for the JSON (the CLI: the checkpoint's path, hash, metadata
            and its flags); the runner's own keys win.
        device: where the examples go (default: the model's device).

    Returns:
        :class:`AttackSummary`.

    Raises:
        FieldError/UserError for bad settings or outputs, before anything is written.
    """
    check_split(split)
    check_config(config, tuple(split.info.image_shape))
    seed = check_seed(seed)
    idx = check_indices(indices, len(split))
    if out is None and (resume or save_adv is not None):
        raise FieldError("out", "is needed with resume or save_adv")
    device = resolve_device(device) if device is not None else _model_device(model)
    if _model_device(model).type != device.type:
        raise UserError(f"the model is on {_model_device(model)} but the examples go to {device}")
    check_memory_for(config, tuple(split.info.image_shape), len(idx), device)
    paths = AttackPaths.for_output(out, save_adv) if out is not None else None
    if paths is not None:
        paths.check_fresh(resume)
        checked = paths.snapshot()
    header = _header(model, split, idx, config, seed=seed, save_adv=save_adv is not None,
                     device=device, extra=extra_record or {})
    b = config.batch_size
    chunks = [idx[s:s + b] for s in range(0, len(idx), b)]
    done: dict[int, ChunkRecord] = {}
    earlier: list[dict[str, Any]] = []
    if paths is not None and resume:
        if paths.state.exists():
            done, earlier = _load_state(paths.state, header, len(chunks))
            log.info("resuming: %d of %d chunks already done", len(done), len(chunks))
        elif paths.json.exists():
            return _finished(paths, header)
        else:
            log.info("%s: %s does not exist yet; starting it", ref("resume", True), shown(paths.json))
    # each call that attacked examples, this one last (a call that saved no chunk is none)
    header["sessions"] = earlier + [session(header["provenance"],
                                            examples_before=sum(len(r) for r in done.values()))]

    chosen = [idx[i] for i in spread_indices(len(idx), CLEAN_CHECK_IMAGES).tolist()]
    dtype = input_dtype(model)
    accuracy, images = clean_accuracy(lambda batch: model(batch.to(dtype)), split, chosen, b, device)
    log_clean_accuracy(accuracy, images, split.info.num_classes,
                       "the base model (no noise)" if config.randomized else "the model",
                       (extra_record or {}).get("class_source"))
    header["clean_check"] = {"examples": images, "accuracy": accuracy}
    if config.randomized:
        log.info("randomized (smoothed) model: x_adv is re-scored %d times; an example counts as "
                 "robust only if every attack fails and every re-scoring is correct (a single "
                 "evaluation overstates robustness)", config.n_rescores)
    lock = None
    if paths is not None:
        ensure_writable_dir(paths.json.parent)
        lock = FileLock(paths.lock, what=f"output {shown(paths.json)}").acquire()
        if paths.snapshot() != checked:
            lock.release()
            raise UserError(f"{shown(paths.json)}'s files changed while this run started (another run?); "
                            "check them and start again")
        if config.attack == "autoattack":
            _open_log_section(paths.aa_log, len(done), len(chunks))
        fault_point("attack.locked")
    try:
        summary, all_ = _attack_chunks(model, split, chunks, done, config, header, paths,
                                       seed=seed, device=device, progress=progress,
                                       keep_adv=save_adv is not None)
    finally:
        if lock is not None:
            lock.release()
    after = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["robust_accuracy_after"].items())
    which = f"the smoothed model (sigma={config.sigma:g}, copies={config.copies}): " if config.randomized else ""
    rule = f"correct after every attack and all {config.n_rescores} re-scorings; " if config.randomized else ""
    log.info("n=%d  %sclean accuracy %.1f%%  robust accuracy %.1f%% (%s%s %s eps=%.6g; after: %s)",
             len(idx), which, 100 * summary["clean_accuracy"], 100 * summary["robust_accuracy"],
             rule, config.attack, config.norm, config.eps, after)
    if config.randomized:
        rs = summary["rescoring"]
        log.info("each of %d re-scorings of x_adv alone: accuracy %.1f%% +- %.1f%% (min %.1f%%, max %.1f%%)",
                 rs["repeats"], 100 * rs["accuracy_mean"], 100 * rs["accuracy_std"],
                 100 * rs["accuracy_min"], 100 * rs["accuracy_max"])
    if paths is not None:
        log.info("wrote %s and %s", paths.json, paths.tsv)
    return AttackSummary(summary, all_, paths)
