"""Certify or predict a whole dataset split: seeding, resumable TSV output, sharding, the ETA.

Two levels, both plain Python:

* :func:`certify_dataset` / :func:`predict_dataset` take a :class:`~robustmaxup.certify.Smooth`
  and a split and return typed rows; with ``out`` they also write the TSV (one flushed row per
  image) and its JSON sidecar, exactly as ``robustmaxup certify`` does.
* :func:`run_job` starts from a checkpoint path (a :class:`SmoothingJob`): it validates every
  input, loads model and data, trial-forwards, checks clean accuracy, then calls the above.
  ``robustmaxup certify``/``predict`` only parse flags into a job and call it.

Reproducibility: image ``idx`` draws its noise only from a generator seeded with
``stream_seed(seed, "certify.noise", idx)``, so reruns, ``resume`` and sharded runs give
identical rows (time aside), and any row can be recomputed alone with ``Smooth.certify``.

Output safety: nothing is written until every input is validated; no output (TSV, sidecar,
shard parts) may be the checkpoint or the data root; the default output name carries the
checkpoint's name (:func:`default_out`); a new output is created exclusively and locked while
written (a second run on the same file fails with one line); a resume refuses a file whose
header is not exactly its own format, or whose sidecar is not one of the same command with the
same settings, and then touches nothing (a file killed before its first row may lack the
sidecar). Sizes are capped (``n``, ``n0``, ``n_max`` <= 10^9) and a noise buffer that cannot
fit in the device's free memory is refused before it is allocated
(:meth:`Settings.check_memory`). Every write boundary is a named fault point
(:mod:`robustmaxup.runtime.faults`), where the kill-and-resume tests end the process.

Example::

    from robustmaxup.certify import Smooth
    from robustmaxup.certify.runner import certify_dataset
    rows = certify_dataset(Smooth(model, 10, 0.25), test_split, range(0, 10000, 20),
                           n0=100, n=100_000, alpha=0.001, batch_size=1000, seed=0,
                           out="certify.tsv")
    rows[0].predict, rows[0].radius
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from robustmaxup.certify import bounds
from robustmaxup.certify.smooth import ABSTAIN, FUTILITY_RULES, PRECISIONS, Smooth
from robustmaxup.certify.tsv import (
    CERTIFY, CERTIFY_SEQUENTIAL, PREDICT, PREDICT_SEQUENTIAL, CertifyRow, PredictRow, Row, TsvFormat, format_time,
    merge_rows, part_path, read_rows, read_sidecar, sidecar_path, write_rows,
)
from robustmaxup.data.sampling import check_max_images
from robustmaxup.data.splits import check_indices, check_split
from robustmaxup.errors import UserError, ref
from robustmaxup.models.state import input_dtype
from robustmaxup.runtime.checks import (
    FieldError, check_alpha, check_choice, check_int, check_positive,
)
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.faults import fault_point
from robustmaxup.runtime.io import (
    atomic_write_json, check_not_inputs, check_output_path, ensure_writable_dir, file_label,
    open_locked, shown,
)
from robustmaxup.runtime.limits import MAX_SAMPLES, batch_bytes, check_memory
from robustmaxup.runtime.progress import Progress
from robustmaxup.runtime.records import check_resume, checkpoint_record, provenance, session
from robustmaxup.runtime.seeds import check_seed, stream_generator
from robustmaxup.runtime.text import error_summary

log = logging.getLogger(__name__)

#: off a terminal, the first progress line (with its ETA) comes after this many images
ETA_AFTER_IMAGES = 5
#: result-defining settings: a resume refuses to continue a file made with other values. The
#: arithmetic is compared as it ran (``autocast``: bf16 or none), not as requested (``precision``):
#: ``auto`` and ``fp32`` are one computation on a CPU, and ``auto`` is bf16 on CUDA, fp32 on a CPU.
RESUME_KEYS = ("checkpoint_sha256", "dataset", "split", "sigma", "mode", "n0", "n", "alpha",
               "seed", "noise_chunk", "autocast", "fold_bn", "indices", "sequential", "class_order")
#: the recorded settings a user sets (sequential ones too), named as arguments in a refused resume
ARGUMENTS = ("dataset", "split", "sigma", "n0", "n", "alpha", "seed", "precision", "fold_bn", "class_order",
             "n_max", "radii", "radius_tol", "sequence", "futility")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SequentialSettings:
    """Sequential CERTIFY (:meth:`Smooth.certify_sequential_batch`): stop once every target
    radius is decided (``radii``), or once the radius is known to ``radius_tol``."""

    n_max: int = 100_000
    radii: tuple[float, ...] | None = (0.25, 0.5, 0.75, 1.0)
    radius_tol: float = 0.02
    sequence: str = bounds.DEFAULT_SEQUENCE
    futility: str = "projected"

    def check(self) -> "SequentialSettings":
        """FieldError for the first bad value; else these settings, ``n_max`` an int."""
        n_max = check_int("n_max", self.n_max, minimum=1, maximum=MAX_SAMPLES)
        check_choice("sequence", self.sequence, list(bounds.CONFIDENCE_SEQUENCES))
        check_choice("futility", self.futility, FUTILITY_RULES)
        for r in self.radii or ():
            check_positive("radii", r, allow_zero=True)
        check_positive("radius_tol", self.radius_tol)
        return dataclasses.replace(self, n_max=n_max)


@dataclass(frozen=True)
class Settings:
    """What defines the rows: sample sizes, level, seed (``n0`` is None for PREDICT)."""

    n: int
    alpha: float
    batch_size: int
    seed: int
    n0: int | None = None
    images_per_batch: int = 1
    sequential: SequentialSettings | None = None

    def check(self) -> "Settings":
        """FieldError for the first bad value; else these settings with every count a Python int
        (a numpy integer is recorded as a plain one)."""
        n0 = None if self.n0 is None else check_int("n0", self.n0, minimum=1, maximum=MAX_SAMPLES)
        n = check_int("n", self.n, minimum=1, maximum=MAX_SAMPLES)
        check_alpha(self.alpha)
        batch_size = check_int("batch_size", self.batch_size, minimum=1)
        images_per_batch = check_int("images_per_batch", self.images_per_batch, minimum=1)
        seed = check_seed(self.seed)
        sequential = None if self.sequential is None else self.sequential.check()
        return dataclasses.replace(self, n0=n0, n=n, batch_size=batch_size, seed=seed,
                                   images_per_batch=images_per_batch, sequential=sequential)

    def check_memory(self, image_shape: Sequence[int], images: int, device: torch.device,
                     noise_chunk: int = 100) -> None:
        """FieldError if one round of noisy copies cannot fit on ``device``: ``images`` (at
        most ``images_per_batch``) images share a buffer of ``max(batch_size, images *
        noise_chunk)`` samples (never more than a phase draws), forwarded in slices of
        ``batch_size`` (see :meth:`Smooth.sample_counts`); checked before anything is allocated."""
        k = max(1, min(self.images_per_batch, images))
        phase = max(self.n0 or 0, self.sequential.n_max if self.sequential else self.n)
        samples = min(max(self.batch_size, k * noise_chunk), k * phase)
        field = "batch_size" if self.batch_size >= k * noise_chunk else "images_per_batch"
        check_memory(field, batch_bytes(samples, image_shape), device,
                     what=f"{samples} noisy copies of {'x'.join(map(str, image_shape))} images")


# ----------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """What differs between CERTIFY, sequential CERTIFY and PREDICT."""

    name: str
    command: str  # the subcommand whose output this is: "certify" or "predict"
    fmt: TsvFormat
    # (smooth, xs [k,C,H,W], labels, idxs, generators, settings, seconds per image) -> rows
    run_group: Callable[..., list[Row]]
    warn_too_few: Callable[[Smooth, Settings], None]


def _certify_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                  gens: Sequence[torch.Generator], s: Settings) -> list[Row]:
    certs = smooth.certify_batch(xs, s.n0, s.n, s.alpha, s.batch_size, gens)
    return [CertifyRow(i, y, c.prediction, c.radius, int(c.prediction == y))
            for i, y, c in zip(idxs, labels, certs)]


def _sequential_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                     gens: Sequence[torch.Generator], s: Settings) -> list[Row]:
    q = s.sequential
    certs = smooth.certify_sequential_batch(xs, s.n0, q.n_max, s.alpha, s.batch_size, gens,
                                            radii=q.radii, radius_tol=q.radius_tol,
                                            sequence=q.sequence, futility=q.futility)
    return [CertifyRow(i, y, c.prediction, c.radius, int(c.prediction == y), n_used=c.n_used)
            for i, y, c in zip(idxs, labels, certs)]


def _predict_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                  gens: Sequence[torch.Generator], s: Settings) -> list[Row]:
    preds = smooth.predict_batch(xs, s.n, s.alpha, s.batch_size, gens)
    return [PredictRow(i, y, p, int(p == y)) for i, y, p in zip(idxs, labels, preds)]


def _predict_sequential_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                             gens: Sequence[torch.Generator], s: Settings) -> list[Row]:
    preds = smooth.predict_sequential_details(xs, s.sequential.n_max, s.alpha, s.batch_size, gens,
                                              futility=s.sequential.futility)
    return [PredictRow(i, y, p.prediction, int(p.prediction == y), n_used=p.n_used)
            for i, y, p in zip(idxs, labels, preds)]


def _warn_certify(smooth: Smooth, s: Settings) -> None:
    if s.sequential:
        smooth.warn_if_sequence_too_short(s.sequential.n_max, s.alpha, s.sequential.sequence)
    else:
        smooth.warn_if_too_few(s.n, s.alpha)


def _warn_predict_sequential(smooth: Smooth, s: Settings) -> None:
    smooth.warn_if_predict_sequence_too_short(s.sequential.n_max, s.alpha)


def _warn_predict(smooth: Smooth, s: Settings) -> None:
    need = bounds.min_samples_to_predict(s.alpha)
    if s.n < need:
        log.warning("warning: n=%d samples can never pass PREDICT's test at alpha=%g (unanimous "
                    "votes give p = %.3g); every image will abstain, use n >= %d",
                    s.n, s.alpha, 2 * 0.5 ** s.n, need)


MODES = {
    "certify": Mode("certify", "certify", CERTIFY, _certify_rows, _warn_certify),
    "certify_sequential": Mode("certify_sequential", "certify", CERTIFY_SEQUENTIAL, _sequential_rows,
                               _warn_certify),
    "predict": Mode("predict", "predict", PREDICT, _predict_rows, _warn_predict),
    "predict_sequential": Mode("predict_sequential", "predict", PREDICT_SEQUENTIAL, _predict_sequential_rows,
                               _warn_predict_sequential),
}

#: what sequential PREDICT uses of :class:`SequentialSettings` (the rest is CERTIFY's)
PREDICT_SEQUENTIAL_FIELDS = ("n_max", "futility")


def mode_of(command: str, settings: Settings) -> Mode:
    """The mode of ``command`` under ``settings``; a FieldError for sequential PREDICT settings
    that only sequential CERTIFY uses (target radii, tolerance, sequence)."""
    q = settings.sequential
    if q is None:
        return MODES[command]
    if command == "predict":
        unused = [f.name for f in dataclasses.fields(q)
                  if f.name not in PREDICT_SEQUENTIAL_FIELDS and getattr(q, f.name) != f.default]
        if unused:
            raise FieldError(unused[0], "applies to sequential certify only; sequential predict uses "
                                        "n_max and futility")
    return MODES[f"{command}_sequential"]


# ----------------------------------------------------------------------------- output files
@dataclass
class Output:
    """Where this process writes: the final file, this rank's file, and the sidecar."""

    final: Path
    mine: Path
    sidecar: Path
    fmt: TsvFormat
    dist: Dist
    #: set by :meth:`check`: the rows already written (every part) and the sidecar they were made
    #: under (None for a new output)
    rows_before: int = 0
    saved: dict[str, Any] | None = None

    @classmethod
    def at(cls, out: str | Path, fmt: TsvFormat, dist: Dist) -> "Output":
        final = Path(out)
        mine = final if not dist.distributed else part_path(final, dist.rank)
        return cls(final, mine, sidecar_path(final), fmt, dist)

    def parts(self) -> list[Path]:
        return [part_path(self.final, r) for r in range(self.dist.world)]

    def paths(self) -> list[Path]:
        """Every file this run may write: the TSV, its sidecar and the shards' parts."""
        return [self.final, self.sidecar, *(self.parts() if self.dist.distributed else [])]

    def check(self, resume: bool, record: dict[str, Any]) -> None:
        """Validate before anything is written: paths, existing files and their formats, and on
        resume the sidecar's settings. UserError, with nothing touched, otherwise.

        A resume continues only a file of exactly its own format (the header) whose sidecar is
        a sidecar of the same command made with the same settings; a file without complete
        rows (a run killed before its first row) may lack the sidecar."""
        for path in self.paths():
            check_output_path(path, "out")
        if not resume:
            self.check_absent()
            return
        existing = [p for p in [self.final, *self.parts()] if p.exists()]
        if not existing and not self.sidecar.exists() and self.dist.main:
            log.info("%s: %s does not exist yet; starting it", ref("resume", True), shown(self.final))
        rows = sum(len(read_rows(path, self.fmt).rows) for path in existing)  # foreign: refused
        self.rows_before = rows
        if self.sidecar.exists():
            saved = self.saved = read_sidecar(self.final)
            if saved.get("command") != record.get("command") or saved.get("mode") != record.get("mode"):
                raise UserError(f"{shown(self.sidecar)} is not the sidecar of a {self.fmt.name} output; "
                                "cannot resume; choose another output")
            check_resume(saved, record, RESUME_KEYS, what=shown(self.final), arguments=ARGUMENTS)
        elif rows:
            raise UserError(f"{shown(self.final)} has no sidecar {shown(self.sidecar.name)}; its settings "
                            "are unknown, so it cannot be resumed; choose another output")

    def check_absent(self) -> None:
        """UserError if a file of this output exists (a run without resume writes none over)."""
        blocking = [p for p in [self.final, *self.parts(), self.sidecar] if p.exists()]
        if blocking:
            raise UserError(f"{shown(blocking[0])} already exists; pass {ref('resume', True)} to continue "
                            f"it (same settings only), or choose another output ({ref('out')})")

    def finished(self, count: int) -> bool:
        """Whether a resumed output is already complete: its sidecar says so, and the final file
        alone holds ``count`` rows (no part is left to merge)."""
        return (self.saved is not None and self.saved.get("complete") is True
                and self.rows_before == count and not any(p.exists() for p in self.parts()))

    def sessions(self, provenance: Any) -> list[dict[str, Any]]:
        """The calls that wrote this output, this one last: ``{"rows_before", "world_size",
        "provenance"}`` each (outputs of versions that kept no sessions list only the new ones)."""
        earlier = list((self.saved or {}).get("sessions") or [])
        return earlier + [session(provenance, rows_before=self.rows_before, world_size=self.dist.world)]

    def done(self) -> set[int]:
        """Indices already written (in the final file or this rank's part)."""
        return set(merge_rows([self.final, self.mine], self.fmt))

    def open(self):
        """This rank's file, locked, positioned after its last complete row (a torn last line
        is cut), with the header written if the file is new."""
        f = open_locked(self.mine, append=self.mine.exists(), what="output")
        contents = read_rows(self.mine, self.fmt)
        f.truncate(contents.complete_bytes)
        if contents.complete_bytes == 0:
            f.write(self.fmt.header + "\n")
            f.flush()
        return f

    def merge(self) -> dict[int, Row]:
        """Rank 0: the final file's rows plus every part, written sorted by idx; parts removed.
        Returns the rows."""
        rows = dict(sorted(merge_rows([self.final, *self.parts()], self.fmt).items()))
        write_rows(self.final, self.fmt, rows.values())
        for part in self.parts():
            part.unlink(missing_ok=True)
        return rows


# ----------------------------------------------------------------------------- the loop
def _compute(mode: Mode, smooth: Smooth, split: Any, todo: Sequence[int], s: Settings,
             device: torch.device, write: Callable[[list[Row]], None], progress: bool) -> None:
    k, dtype = s.images_per_batch, input_dtype(smooth.base_classifier)
    with Progress(len(todo), desc=mode.command, unit="img", enabled=progress,
                  first_after=ETA_AFTER_IMAGES) as bar:
        for start in range(0, len(todo), k):
            group = list(todo[start:start + k])
            t0 = time.perf_counter()
            xs, ys = split.batch(group)
            xs = xs.to(device, dtype=dtype, non_blocking=True)
            gens = [stream_generator(s.seed, "certify.noise", i, device=device) for i in group]
            rows = mode.run_group(smooth, xs, ys.tolist(), group, gens, s)
            per_image = (time.perf_counter() - t0) / len(group)
            write([dataclasses.replace(r, time=per_image) for r in rows])
            bar.update(len(group))


def _run(command: str, smooth: Smooth, split: Any, indices: Sequence[int], s: Settings, *,
         out: str | Path | None, resume: bool, record: dict[str, Any] | None, progress: bool,
         dist: Dist | None) -> list[Row]:
    s = s.check()
    check_split(split)
    mode = mode_of(command, s)
    indices = check_indices(indices, len(split))
    dist = dist or Dist()
    device = _device_of(smooth)
    s.check_memory(tuple(split[indices[0]][0].shape), len(indices[dist.rank::dist.world]), device,
                   smooth.noise_chunk)
    sidecar = {**(record or {}), **_settings_record(command, smooth, split, indices, s, dist, device)}
    # as the sidecar file will hold it (tuples become lists), so a resume compares like with like
    sidecar = json.loads(json.dumps(sidecar, default=str))
    output = None if out is None else Output.at(out, mode.fmt, dist)
    if output is not None:
        output.check(resume, sidecar)
    if dist.main:  # before the first image: n too small to ever certify (or pass PREDICT's test)
        mode.warn_too_few(smooth, s)
    if output is None:
        return _run_in_memory(mode, smooth, split, indices, s, device, progress, dist)
    return _run_to_file(mode, smooth, split, indices, s, output, sidecar, device, progress)


def _run_in_memory(mode: Mode, smooth: Smooth, split: Any, indices: list[int], s: Settings,
                   device: torch.device, progress: bool, dist: Dist) -> list[Row]:
    """Each rank computes its share; rank 0 gathers every row (the others return none)."""
    rows: list[Row] = []
    with dist.group(device, backend="gloo", long_wait=True):
        _compute(mode, smooth, split, indices[dist.rank::dist.world], s, device, rows.extend,
                 progress and dist.main)
        parts = dist.gather_objects(rows)
    return [] if parts is None else sorted((r for part in parts for r in part), key=lambda r: r.idx)


def _run_to_file(mode: Mode, smooth: Smooth, split: Any, indices: list[int], s: Settings,
                 output: Output, sidecar: dict[str, Any], device: torch.device,
                 progress: bool) -> list[Row]:
    dist, command = output.dist, mode.command
    if output.finished(len(indices)):  # a complete output resumed: read, nothing rewritten
        log.info("%s is complete (%d rows); nothing to do", shown(output.final), len(indices))
        rows = read_rows(output.final, mode.fmt).rows
        return [rows[i] for i in sorted(rows)] if dist.main else []
    sidecar = {**sidecar, "sessions": output.sessions(sidecar["provenance"])}
    ensure_writable_dir(output.final.parent)
    mine = indices[dist.rank::dist.world]
    t_start = time.perf_counter()
    rows: dict[int, Row] = {}
    with dist.group(device, backend="gloo", long_wait=True):
        done = output.done()
        todo = [i for i in mine if i not in done]
        if len(todo) < len(mine):
            log.info("resuming: %d of this process's %d images already done", len(mine) - len(todo), len(mine))
        new = [p for p in (output.mine, output.sidecar if dist.main else None) if p and not p.exists()]
        written = 0
        try:
            with output.open() as f:
                fault_point(f"{command}.header")
                if dist.main:
                    atomic_write_json(output.sidecar, {**sidecar, "complete": False})
                    fault_point(f"{command}.sidecar_started")

                def write(rows: list[Row]) -> None:
                    nonlocal written
                    f.write("".join(r.to_line() + "\n" for r in rows))
                    f.flush()
                    written += len(rows)
                    fault_point(f"{command}.row")

                _compute(mode, smooth, split, todo, s, device, write, progress and dist.main)
        except BaseException:
            if written == 0:
                _discard_unstarted(new)
            raise
        dist.barrier()
        if dist.main:
            fault_point(f"{command}.merge")
            rows = output.merge() if dist.distributed else read_rows(output.final, mode.fmt).rows
            rows = dict(sorted(rows.items()))  # by index, as without a file
            count = len(rows)
            elapsed = time.perf_counter() - t_start
            fault_point(f"{command}.sidecar")
            # every call's work, interruptions included: the rows' own times, not this call's clock
            total = sum(r.time for r in rows.values())
            atomic_write_json(output.sidecar, {**sidecar, "complete": count == len(indices),
                                               "rows": count, "total_time_s": total,
                                               "this_call_s": elapsed})
            log.info("wrote %s (%d rows) in %s (this call %s)", output.final, count,
                     format_time(total), format_time(elapsed))
        dist.barrier()
    return list(rows.values())  # rank 0 only; the other ranks' rows are in the file


def _discard_unstarted(created: Sequence[Path]) -> None:
    """After a failure (a full disk, Ctrl-C, SIGTERM) before this call wrote its first row: remove
    the files it created (a header-only TSV, its sidecar), so the same command can simply be run
    again. An output with rows is kept: ``resume`` continues it."""
    removed = []
    for path in created:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(shown(path))
    if removed:
        log.info("removed %s (no row was written)", " and ".join(removed))


def _device_of(smooth: Smooth) -> torch.device:
    p = next(iter(smooth.base_classifier.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    """``"torch.bfloat16"`` for a record; None (JSON null) for no autocast."""
    return None if dtype is None else str(dtype)


def _class_order(smooth: Smooth) -> list[int] | None:
    """The base classifier's output reordering (``NormalizedModel.output_order``), if any."""
    order = getattr(smooth.base_classifier, "output_order", None)
    return None if order is None else [int(i) for i in order.tolist()]


def _sequential_record(mode: Mode, s: Settings) -> dict[str, Any]:
    """The sidecar's sequential settings: those the mode uses, and its stopping rule."""
    q = s.sequential
    if q is None:
        return {"sequential": None, "confidence_sequence": None}
    if mode.command == "predict":
        return {"sequential": {f: getattr(q, f) for f in PREDICT_SEQUENTIAL_FIELDS},
                "confidence_sequence": "one_sided_mixture evidence >= (num_classes - 1) / alpha "
                                       "(Smooth.predict_sequential)"}
    return {"sequential": dataclasses.asdict(q), "confidence_sequence": q.sequence}


def _settings_record(command: str, smooth: Smooth, split: Any, indices: list[int], s: Settings,
                     dist: Dist, device: torch.device) -> dict[str, Any]:
    mode = mode_of(command, s)
    info = getattr(split, "info", None)
    return {
        "command": command, "mode": mode.name,
        "dataset": getattr(info, "name", None), "split": getattr(split, "split", None),
        "split_size": len(split), "indices": indices, "num_selected": len(indices),
        "full_split": len(indices) == len(split),
        "sigma": smooth.sigma, "n0": s.n0, "n": s.n, "alpha": s.alpha, "seed": s.seed,
        "batch_size": s.batch_size, "images_per_batch": s.images_per_batch,
        **_sequential_record(mode, s),
        "noise_chunk": smooth.noise_chunk, "precision": smooth.precision, "fold_bn": smooth.fold_bn,
        "autocast": _dtype_name(smooth.autocast_dtype(device)), "class_order": _class_order(smooth),
        "noise_seed_rule": "runtime.seeds.stream_generator(seed, 'certify.noise', idx, device)",
        "world_size": dist.world,
        "columns": list(mode.fmt.columns),
        "time_column": "wall time per image, H:MM:SS.mmm",
        "radius_threshold": "certified at r means radius >= r",
        "provenance": provenance(device),
    }


# ----------------------------------------------------------------------------- public API
def certify_dataset(smooth: Smooth, split: Any, indices: Sequence[int], *, n0: int = 100,
                    n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
                    out: str | Path | None = None, resume: bool = False,
                    images_per_batch: int = 1, sequential: SequentialSettings | None = None,
                    record: dict[str, Any] | None = None, progress: bool = True,
                    dist: Dist | None = None) -> list[CertifyRow]:
    """Cohen et al.'s CERTIFY (or, with ``sequential``, sequential CERTIFY) on ``split[i]`` for
    every ``i`` in ``indices``; one :class:`CertifyRow` per image, sorted by index.

    Args:
        smooth: the smoothed classifier (its model on the device the work runs on).
        split: a dataset split (``split.batch(idx) -> (x [k,C,H,W] in [0,1], y [k])``):
            :func:`~robustmaxup.data.load_split`'s, or your own tensors through
            :meth:`~robustmaxup.data.ImageSplit.from_tensors`.
        indices: dataset indices to certify.
        n0, n, alpha, batch_size: as in :meth:`Smooth.certify` (``n`` is unused when
            ``sequential`` is given; its ``n_max`` caps the samples).
        seed: image ``i``'s noise comes from ``stream_seed(seed, "certify.noise", i)``.
        out: also write the TSV (and ``out + ".json"``, the sidecar) there; ``None``: don't.
        resume: continue an interrupted ``out`` (same settings required).
        images_per_batch: images whose noise shares a forward pass (speed only).
        sequential: :class:`SequentialSettings` for sequential CERTIFY.
        record: extra entries for the sidecar (e.g. the checkpoint's hash).
        progress: a progress bar on a terminal, and the ETA log line.
        dist: the process group for sharded runs (``None``: one process).

    Returns:
        the rows (under torchrun: all rows on rank 0, none elsewhere).
    """
    s = Settings(n=n, alpha=alpha, batch_size=batch_size, seed=seed, n0=n0,
                 images_per_batch=images_per_batch, sequential=sequential)
    return _run("certify", smooth, split, indices, s, out=out, resume=resume, record=record,
                progress=progress, dist=dist)


def predict_dataset(smooth: Smooth, split: Any, indices: Sequence[int], *, n: int = 100_000,
                    alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
                    out: str | Path | None = None, resume: bool = False,
                    images_per_batch: int = 1, sequential: SequentialSettings | None = None,
                    record: dict[str, Any] | None = None, progress: bool = True,
                    dist: Dist | None = None) -> list[PredictRow]:
    """Cohen et al.'s PREDICT on every ``split[i]``, ``i`` in ``indices``: one
    :class:`PredictRow` per image (``predict`` = -1 abstains). Arguments as
    :func:`certify_dataset`; with ``sequential`` (only its ``n_max`` applies), sequential PREDICT
    (:meth:`Smooth.predict_sequential`: stops each image once decided; rows carry ``n_used``)."""
    s = Settings(n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                 images_per_batch=images_per_batch, sequential=sequential)
    return _run("predict", smooth, split, indices, s, out=out, resume=resume, record=record,
                progress=progress, dist=dist)


# ----------------------------------------------------------------------------- from a checkpoint
@dataclass(frozen=True)
class SmoothingJob:
    """Everything ``robustmaxup certify``/``predict`` needs, as typed values."""

    command: str
    checkpoint: str
    dataset: str
    data_root: str | None = None
    cache_dir: str | None = None
    split: str = "test"
    sigma: float | None = None
    n0: int | None = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    skip: int = 1
    max_images: int = -1
    out: str | None = None
    resume: bool = False
    images_per_batch: int = 1
    precision: str = "auto"
    compile: bool = False
    fold_bn: bool = False
    device: str = "auto"
    seed: int = 0
    quiet: bool = False
    sequential: SequentialSettings | None = None
    class_order: tuple[str, ...] | None = None

    def settings(self) -> Settings:
        return Settings(n=self.n, alpha=self.alpha, batch_size=self.batch_size, seed=self.seed,
                        n0=self.n0 if self.command == "certify" else None,
                        images_per_batch=self.images_per_batch, sequential=self.sequential)

    def check(self) -> None:
        """FieldError for any out-of-range value (before anything is loaded)."""
        check_choice("command", self.command, ("certify", "predict"))
        if self.sigma is not None:
            check_positive("sigma", self.sigma)
        check_int("skip", self.skip, minimum=1)
        check_max_images(self.max_images)
        check_choice("precision", self.precision, ["auto", *PRECISIONS])
        self.settings().check()
        mode_of(self.command, self.settings())


def default_out(job: SmoothingJob, sigma: float) -> Path:
    """``<command>_<checkpoint>_<split>_sigma<S>[_sequential].tsv`` in the current directory,
    where ``<checkpoint>`` is :func:`~robustmaxup.runtime.io.file_label` of the checkpoint (its
    stem, ``runs/maxup/last.pt`` -> ``maxup-last``), so two models certified side by side never
    share a default output, nor do a fixed-n and a sequential run of one model (their files
    have different columns)."""
    mode = "_sequential" if job.sequential is not None else ""
    return Path(f"{job.command}_{file_label(job.checkpoint)}_{job.split}_sigma{sigma:g}{mode}.tsv")


def _trial_forward(smooth: Smooth, split: Any, index: int, device: torch.device,
                   generator: torch.Generator) -> None:
    """Forward one clean and a few noisy copies of an image; failures become UserErrors."""
    x, _ = split[index]
    x = x.to(device, dtype=input_dtype(smooth.base_classifier))
    try:
        with torch.no_grad():
            logits = smooth.logits(x[None], compiled=False)
            noisy = x[None] + smooth.sigma * torch.randn((8, *x.shape), generator=generator,
                                                         device=device, dtype=x.dtype)
            logits = torch.cat([logits, smooth.logits(noisy, compiled=False)])
    except RuntimeError as e:
        first = error_summary(e, 200)
        raise UserError(f"the model does not accept {split.info.name} images of shape "
                        f"{tuple(x.shape)}: {first}; check {ref('dataset')} and the checkpoint") from None
    if logits.dim() != 2 or logits.shape[1] != smooth.num_classes:
        raise UserError(f"the model returns logits of shape {tuple(logits.shape[1:])} per image, "
                        f"expected [{smooth.num_classes}]; check {ref('dataset')} and the checkpoint")
    if not torch.isfinite(logits.float()).all():
        raise UserError("the model returns non-finite logits (NaN/inf) on a trial batch; the "
                        f"checkpoint is broken, or try {ref('precision', 'fp32')}")


def _check_out(job: SmoothingJob, out: Path, s: Settings, dist: Dist) -> None:
    """UserError for an output that is not a writable file path, is one of the job's inputs, or
    (without resume) exists already; nothing is touched."""
    output = Output.at(out, mode_of(job.command, s).fmt, dist)
    for path in output.paths():
        check_output_path(path, "out")
    inputs = [("the checkpoint", job.checkpoint), (f"the data root ({ref('data_root')})", job.data_root)]
    check_not_inputs([("out", p) for p in output.paths()], inputs)
    if not job.resume:
        output.check_absent()


def _shown_indices(indices: Sequence[int]) -> str:
    """``0, 45, 90, ..., 9990``: the first three and the last of a selection."""
    head = ", ".join(map(str, indices[:3]))
    return head if len(indices) <= 4 else f"{head}, ..., {indices[-1]}"


def run_job(job: SmoothingJob) -> list[Row]:
    """Validate ``job``, load model and data, check them, then certify or predict (see module
    docstring); no output file is touched before every check has passed."""
    from robustmaxup.checkpoints import load_model, map_classes, resolve_sigma
    from robustmaxup.data import get_info, load_split, select_indices, spread_indices
    from robustmaxup.models.probe import clean_accuracy, log_clean_accuracy

    job.check()
    dist = Dist.from_env()
    device = dist.device(job.device)
    info = get_info(job.dataset)
    s = job.settings()
    if job.out:  # refuse a bad output before the (slow) loading
        _check_out(job, Path(job.out), s, dist)
    # loaded outside inference mode: the weights stay ordinary tensors (backward works later)
    model, meta = load_model(job.checkpoint, dataset=job.dataset, num_classes=info.num_classes,
                             device=device)
    sigma, source = resolve_sigma(job.sigma, meta, verb="certifying",
                                  missing_hint=f"pass {ref('sigma')} (e.g. {ref('sigma', 0.25)})")
    out = Path(job.out) if job.out else default_out(job, sigma)
    if not job.out:  # the default name needs sigma, known only now
        _check_out(job, out, s, dist)
    split = load_split(job.dataset, job.split, root=job.data_root, cache_dir=job.cache_dir)
    indices = select_indices(len(split), job.skip, job.max_images)
    if not indices:
        raise UserError(f"no images selected from the {len(split)}-image {job.split} split; "
                        f"check {ref('skip')} and {ref('max_images')}")
    if dist.main and 0 <= job.max_images < len(range(0, len(split), job.skip)):
        log.info("%s: %d images spread evenly over the %s split, indices %s (Cohen et al.'s "
                 "certify.py stops at that index instead)", ref("max_images", job.max_images), len(indices), job.split,
                 _shown_indices(indices))
    s.check_memory(info.image_shape, len(indices[dist.rank::dist.world]), device)
    classes = map_classes(model, meta, split.classes, job.class_order, quiet=not dist.main)
    smooth = Smooth(model, info.num_classes, sigma, precision=job.precision, compile=job.compile,
                    fold_bn=job.fold_bn)
    _trial_forward(smooth, split, indices[0], device, stream_generator(job.seed, "certify.noise", -1, device=device))
    chosen = [indices[i] for i in spread_indices(len(indices), 100).tolist()]
    dtype = input_dtype(model)
    acc, n_check = clean_accuracy(lambda b: smooth.logits(b.to(dtype), compiled=False), split, chosen,
                                  job.batch_size, device)
    if dist.main:
        log_clean_accuracy(acc, n_check, info.num_classes, "the base classifier", classes["class_source"])
    record = {
        "config": dataclasses.asdict(job), **checkpoint_record(job.checkpoint, meta),
        "skip": job.skip, "max": job.max_images, "sigma_source": source, **classes,
        "index_rule": "data.select_indices: every skip-th index, then max of them spread evenly",
        "clean_accuracy": {"images": n_check, "accuracy": acc},
    }
    return _run(job.command, smooth, split, indices, s, out=out, resume=job.resume,
                record=record, progress=not job.quiet, dist=dist)


__all__ = ["ABSTAIN", "SequentialSettings", "Settings", "SmoothingJob", "certify_dataset",
           "predict_dataset", "run_job", "default_out"]
