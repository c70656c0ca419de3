"""The TSV files of ``certify`` and ``predict``: typed rows, strict reading, shard merging.

Cohen et al.'s format, so existing analysis scripts read our files::

    certify:             idx  label  predict  radius  correct  time
    certify (sequential): idx  label  predict  radius  correct  time  n_used
    predict:             idx  label  predict  correct  time

``predict`` is -1 (:data:`ABSTAIN`) for an abstention, ``radius`` has 6 decimals, ``time`` is the
wall time spent on the image as ``H:MM:SS.mmm`` and ``n_used`` the number of estimation samples a
sequential run drew. Files are written one flushed row per image; a kill can leave a torn last
line without newline, which every reader here ignores. This module is the only place that knows
the format: the runner writes through it and :mod:`~robustmaxup.certify.analysis` reads through it.

Example::

    row = CertifyRow(idx=7, label=3, predict=3, radius=0.51, correct=1, time=1.25)
    row.to_line()                       # '7\\t3\\t3\\t0.510000\\t1\\t0:00:01.250'
    CertifyRow.from_line(row.to_line(), CERTIFY) == row
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from robustmaxup.certify.smooth import ABSTAIN
from robustmaxup.errors import UserError
from robustmaxup.runtime.io import atomic_write_text, check_input_path, shown


def format_time(seconds: float) -> str:
    """``H:MM:SS.mmm`` like Cohen et al.'s ``str(timedelta)``, to the millisecond."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h}:{m:02d}:{s:02d}.{ms:03d}"


def parse_time(text: str) -> float:
    """Seconds from ``H:MM:SS[.fff]`` (ours or Cohen's ``str(timedelta)``); ValueError otherwise."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"bad time {text!r}")
    h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
    return 3600 * h + 60 * m + s


@dataclass(frozen=True)
class CertifyRow:
    """One image's CERTIFY result; ``n_used`` is set by sequential runs only."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float = 0.0
    n_used: int | None = None

    @property
    def abstained(self) -> bool:
        return self.predict == ABSTAIN

    def to_line(self) -> str:
        fields = [str(self.idx), str(self.label), str(self.predict), f"{self.radius:.6f}",
                  str(self.correct), format_time(self.time)]
        if self.n_used is not None:
            fields.append(str(self.n_used))
        return "\t".join(fields)

    @classmethod
    def from_fields(cls, f: Sequence[str], columns: Sequence[str]) -> "CertifyRow":
        col = {c: i for i, c in enumerate(columns)}
        return cls(int(f[col["idx"]]), int(f[col["label"]]), int(f[col["predict"]]),
                   float(f[col["radius"]]), int(f[col["correct"]]),
                   parse_time(f[col["time"]]) if "time" in col else 0.0,
                   int(f[col["n_used"]]) if "n_used" in col else None)

    @classmethod
    def from_line(cls, line: str, fmt: "TsvFormat") -> "CertifyRow":
        return cls.from_fields(line.split("\t"), fmt.columns)


@dataclass(frozen=True)
class PredictRow:
    """One image's PREDICT result."""

    idx: int
    label: int
    predict: int
    correct: int
    time: float = 0.0

    def to_line(self) -> str:
        return "\t".join([str(self.idx), str(self.label), str(self.predict), str(self.correct),
                          format_time(self.time)])

    @classmethod
    def from_fields(cls, f: Sequence[str], columns: Sequence[str]) -> "PredictRow":
        col = {c: i for i, c in enumerate(columns)}
        return cls(int(f[col["idx"]]), int(f[col["label"]]), int(f[col["predict"]]),
                   int(f[col["correct"]]), parse_time(f[col["time"]]) if "time" in col else 0.0)

    @classmethod
    def from_line(cls, line: str, fmt: "TsvFormat") -> "PredictRow":
        return cls.from_fields(line.split("\t"), fmt.columns)


Row = Union[CertifyRow, PredictRow]


@dataclass(frozen=True)
class TsvFormat:
    """A file kind: its columns (the header) and its row type."""

    name: str
    columns: tuple[str, ...]
    row: type

    @property
    def header(self) -> str:
        return "\t".join(self.columns)

    def parse(self, line: str) -> Row:
        return self.row.from_line(line, self)


CERTIFY = TsvFormat("certify", ("idx", "label", "predict", "radius", "correct", "time"), CertifyRow)
CERTIFY_SEQUENTIAL = TsvFormat("certify --sequential", CERTIFY.columns + ("n_used",), CertifyRow)
PREDICT = TsvFormat("predict", ("idx", "label", "predict", "correct", "time"), PredictRow)
FORMATS = (CERTIFY, CERTIFY_SEQUENTIAL, PREDICT)


@dataclass(frozen=True)
class TsvContents:
    """The complete rows of a file, by image index, and the byte length of its complete part
    (what a resumed run keeps; a torn last line lies beyond it)."""

    rows: dict[int, Row]
    complete_bytes: int


def _complete_lines(path: Path) -> tuple[list[str], int]:
    check_input_path(path, "TSV")  # a regular file (never a device or pipe that never ends)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except MemoryError:
        raise UserError(f"{path} is too large to be a TSV of this tool") from None
    end = data.rfind(b"\n") + 1
    if b"\x00" in data[:end] or (end == 0 and b"\x00" in data[:4096]):
        raise UserError(f"{path} is a binary file, not UTF-8 text; is it a TSV?")
    try:
        return data[:end].decode("utf-8").splitlines(), end
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8); is it a TSV?") from None


def read_rows(path: str | os.PathLike, fmt: TsvFormat) -> TsvContents:
    """Complete rows of a ``fmt`` file, by idx; a torn last line is not counted.

    UserError if the header is not exactly ``fmt``'s or a complete row is malformed: a file that
    is not of this format is never taken for one (nor truncated by a resume).
    """
    path = Path(path)
    lines, end = _complete_lines(path)
    if not lines:
        if end == 0 and path.stat().st_size > 0:
            raise UserError(f"{path} does not start with the header {fmt.header!r}; it is not "
                            f"a {fmt.name} output, choose another output file")
        return TsvContents({}, 0)
    if lines[0] != fmt.header:
        raise UserError(f"{path} does not start with the header {fmt.header!r}; it is not a "
                        f"{fmt.name} output, choose another output file")
    rows: dict[int, Row] = {}
    for line in lines[1:]:
        fields = line.split("\t")
        try:
            if len(fields) != len(fmt.columns):
                raise ValueError(line)
            row = fmt.row.from_fields(fields, fmt.columns)
        except (ValueError, IndexError):
            raise UserError(f"{path} has a malformed row {line[:60]!r}; remove it and rerun "
                            "with --resume") from None
        rows[row.idx] = row
    return TsvContents(rows, end)


def read_certify(path: str | os.PathLike) -> tuple[list[CertifyRow], tuple[str, ...]]:
    """Rows of any certify TSV, ours (fixed-n or sequential) or Cohen et al.'s, found by column
    name; a torn last line is ignored. Returns ``(rows, columns)``."""
    path = Path(path)
    lines, _ = _complete_lines(path)
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{path} is empty; expected a certify TSV with header {CERTIFY.header!r}")
    columns = tuple(h.strip() for h in lines[0].split("\t"))
    missing = [c for c in ("idx", "label", "predict", "radius", "correct") if c not in columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; is it a certify (not "
                        "predict) TSV?")
    rows = []
    for line in lines[1:]:
        try:
            rows.append(CertifyRow.from_fields(line.split("\t"), columns))
        except (ValueError, IndexError):
            raise UserError(f"{path} has a malformed row {line[:60]!r}; regenerate it or remove "
                            "the row") from None
    return rows, columns


def write_rows(path: str | os.PathLike, fmt: TsvFormat, rows: Iterable[Row]) -> int:
    """Write ``rows`` sorted by idx under ``fmt``'s header, atomically; returns the count."""
    ordered = sorted(rows, key=lambda r: r.idx)
    atomic_write_text(path, fmt.header + "\n" + "".join(r.to_line() + "\n" for r in ordered))
    return len(ordered)


def merge_rows(sources: Sequence[str | os.PathLike], fmt: TsvFormat) -> dict[int, Row]:
    """Rows of every existing file in ``sources`` (later files win on the same idx)."""
    rows: dict[int, Row] = {}
    for src in sources:
        if Path(src).exists():
            rows.update(read_rows(src, fmt).rows)
    return rows


def sidecar_path(path: str | os.PathLike) -> Path:
    """``FILE.tsv.json``, the JSON sidecar of ``FILE.tsv`` (its settings and provenance)."""
    return Path(str(path) + ".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of the TSV ``path`` as a dict (None if there is none); UserError if it is not
    readable JSON or not a JSON object."""
    sidecar = sidecar_path(path)
    if not os.path.lexists(sidecar):
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise UserError(f"the sidecar {shown(sidecar)} is not readable JSON ({reason}); fix or "
                        "remove it") from None
    if not isinstance(meta, dict):
        raise UserError(f"the sidecar {shown(sidecar)} holds a JSON {type(meta).__name__}, not an "
                        "object; fix or remove it")
    return meta


def part_path(out: str | os.PathLike, rank: int) -> Path:
    """The file rank ``rank`` of a sharded run writes before rank 0 merges it into ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}")
