"""The TSV files of ``certify`` and ``predict``: typed rows, strict reading, shard merging.

Cohen et al.'s format, so existing analysis scripts read our files::

    certify:             idx  label  predict  radius  correct  time
    certify (sequential): idx  label  predict  radius  correct  time  n_used
    predict:             idx  label  predict  correct  time
    predict (sequential): idx  label  predict  correct  time  n_used

``predict`` is -1 (:data:`ABSTAIN`) for an abstention, ``radius`` has 6 decimals, rounded down
(:func:`radius_as_written`: a row, in memory or in a file, never claims more than was certified,
and the two hold the same value), ``time`` is the
wall time spent on the image as ``H:MM:SS.mmm`` and ``n_used`` the number of (estimation) samples
a sequential run drew. Files are written one flushed row per image; a kill can leave a torn last
line without newline, which every reader here ignores. This module is the only place that knows
the format: the runner writes through it and :mod:`~robustmaxup.certify.analysis` reads through it.

Every complete row read is checked (:class:`RowError` names the column; the readers turn it into
one UserError line naming the file, the line and the column): ``idx``, ``label`` and ``n_used``
are integers >= 0, ``predict`` one >= -1; ``radius`` is a finite number >= 0; ``correct`` is
``int(predict == label)``; an abstention has radius 0 and correct 0; ``time`` is ours
(``H:MM:SS.mmm``) or Cohen et al.'s ``str(timedelta)`` (``0:00:01.234567``, ``0:00:01``,
``1 day, 0:00:01.5``), never negative; and ``idx`` is unique within a file.

Example::

    row = CertifyRow(idx=7, label=3, predict=3, radius=0.51, correct=1, time=1.25)
    row.to_line()                       # '7\\t3\\t3\\t0.510000\\t1\\t0:00:01.250'
    CertifyRow.from_line(row.to_line(), CERTIFY) == row
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from robustmaxup.certify.smooth import ABSTAIN
from robustmaxup.errors import UserError, ref
from robustmaxup.runtime.io import atomic_write_text, check_input_path, shown
from robustmaxup.runtime.text import safe_text


def format_time(seconds: float) -> str:
    """``H:MM:SS.mmm`` like Cohen et al.'s ``str(timedelta)``, to the millisecond."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h}:{m:02d}:{s:02d}.{ms:03d}"


#: ``str(datetime.timedelta)`` (Cohen et al.: ``0:00:01.234567``, ``0:00:01``, ``1 day, 2:03:04.5``)
#: and :func:`format_time` (``25:00:00.000``: hours past 24, no days)
_TIME = re.compile(r"(?:([0-9]{1,9}) days?, )?([0-9]{1,9}):([0-5][0-9]):([0-5][0-9](?:\.[0-9]{1,9})?)",
                   re.ASCII)
_INT = re.compile(r"-?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INT64_MAX = 2**63 - 1  # analysis holds the integer columns as int64


class RowError(ValueError):
    """A row that breaks the format: the ``column`` at fault and the ``problem`` in words."""

    def __init__(self, column: str, problem: str):
        super().__init__(f"column {column}: {problem}")
        self.column, self.problem = column, problem


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_time(text: str) -> float:
    """Seconds from ``H:MM:SS[.fff]`` (ours) or Cohen et al.'s ``str(timedelta)`` (``[D day[s],
    ]H:MM:SS[.ffffff]``); a :class:`RowError` (column ``time``, a ValueError) otherwise."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise RowError("time", f"{_quoted(text)} is not a duration H:MM:SS.fff (robustmaxup) or "
                               "str(timedelta) like 0:00:01.234567 or 1 day, 0:00:01 (Cohen et al.)")
    days, h, mins, s = m.groups()
    return 86400 * int(days or 0) + 3600 * int(h) + 60 * int(mins) + float(s)


def _int(f: Sequence[str], col: dict[str, int], name: str, low: int, high: int, meaning: str) -> int:
    text = f[col[name]].strip()
    if not _INT.fullmatch(text):
        raise RowError(name, f"{_quoted(text)} is not an integer; {meaning}")
    if len(text.lstrip("-").lstrip("0")) > 19 or not low <= int(text) <= high:  # no int() of huge text
        raise RowError(name, f"{_quoted(text)} is out of range; {meaning}")
    return int(text)


def _radius(f: Sequence[str], col: dict[str, int]) -> float:
    text = f[col["radius"]].strip()
    value = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise RowError("radius", f"{_quoted(text)} is not a finite number; a certified radius is a "
                                 "finite number >= 0")
    if value < 0:
        raise RowError("radius", f"{text} is negative; a certified radius is >= 0")
    return value


def _common(f: Sequence[str], col: dict[str, int]) -> tuple[int, int, int, int, float]:
    """idx, label, predict, correct (range-checked) and time of a row."""
    idx = _int(f, col, "idx", 0, _INT64_MAX, "an image index is an integer >= 0")
    label = _int(f, col, "label", 0, _INT64_MAX, "a class label is an integer >= 0")
    predict = _int(f, col, "predict", ABSTAIN, _INT64_MAX,
                   f"a prediction is a class >= 0 or {ABSTAIN} (abstain)")
    correct = _int(f, col, "correct", 0, 1, "correct is 0 or 1")
    time = parse_time(f[col["time"]]) if "time" in col else 0.0
    return idx, label, predict, correct, time


def _n_used(f: Sequence[str], col: dict[str, int]) -> int | None:
    """The ``n_used`` column of a sequential row (None in a fixed-n file)."""
    return _int(f, col, "n_used", 0, _INT64_MAX, "a sample count is an integer >= 0") if "n_used" in col else None


def _check_outcome(label: int, predict: int, correct: int, radius: float | None) -> None:
    """An abstention has radius 0 and correct 0; correct is int(predict == label)."""
    if predict == ABSTAIN:
        if radius is not None and radius != 0:
            raise RowError("radius", f"{radius:g} on an abstention (predict {ABSTAIN}); an abstention "
                                     "has radius 0")
        if correct != 0:
            raise RowError("correct", f"{correct} on an abstention (predict {ABSTAIN}); an abstention "
                                      "has correct 0")
    if correct != int(predict == label):
        relation = "==" if predict == label else "!="
        raise RowError("correct", f"{correct} but predict {predict} {relation} label {label}; "
                                  "correct is 1 exactly when predict == label")


def radius_as_written(radius: float) -> float:
    """``radius`` rounded *down* to the 6 decimals a TSV holds (0.2499996 -> 0.249999, never
    0.25): what a row keeps, so reading a file back gives exactly the rows that wrote it."""
    shown = float(f"{radius:.6f}")
    return shown if shown <= radius else float(f"{shown - 1e-6:.6f}")


@dataclass(frozen=True)
class CertifyRow:
    """One image's CERTIFY result; ``n_used`` is set by sequential runs only. ``radius`` is kept
    as the file writes it (:func:`radius_as_written`)."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float = 0.0
    n_used: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.radius, float) and math.isfinite(self.radius):
            object.__setattr__(self, "radius", radius_as_written(self.radius))

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
        """The row of the fields ``f`` under ``columns`` (found by name); :class:`RowError`
        naming the column if a value breaks the format (see the module docstring)."""
        col = {c: i for i, c in enumerate(columns)}
        idx, label, predict, correct, time = _common(f, col)
        radius = _radius(f, col)
        _check_outcome(label, predict, correct, radius)
        return cls(idx, label, predict, radius, correct, time, _n_used(f, col))

    @classmethod
    def from_line(cls, line: str, fmt: "TsvFormat") -> "CertifyRow":
        return cls.from_fields(line.split("\t"), fmt.columns)


@dataclass(frozen=True)
class PredictRow:
    """One image's PREDICT result; ``n_used`` is set by sequential runs only."""

    idx: int
    label: int
    predict: int
    correct: int
    time: float = 0.0
    n_used: int | None = None

    def to_line(self) -> str:
        fields = [str(self.idx), str(self.label), str(self.predict), str(self.correct), format_time(self.time)]
        return "\t".join(fields + ([str(self.n_used)] if self.n_used is not None else []))

    @classmethod
    def from_fields(cls, f: Sequence[str], columns: Sequence[str]) -> "PredictRow":
        """As :meth:`CertifyRow.from_fields`, without a radius."""
        col = {c: i for i, c in enumerate(columns)}
        idx, label, predict, correct, time = _common(f, col)
        _check_outcome(label, predict, correct, None)
        return cls(idx, label, predict, correct, time, _n_used(f, col))

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
PREDICT_SEQUENTIAL = TsvFormat("predict --sequential", PREDICT.columns + ("n_used",), PredictRow)
FORMATS = (CERTIFY, CERTIFY_SEQUENTIAL, PREDICT, PREDICT_SEQUENTIAL)


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


def _parse_rows(path: Path, lines: Iterable[tuple[int, str]], row_type: type,
                columns: Sequence[str], fix: str) -> list[Row]:
    """The rows of ``(line number, line)`` pairs under ``columns``; UserError, one line naming
    the file, the line, the column and ``fix``, at the first row that breaks the format or
    repeats an idx."""
    rows: list[Row] = []
    seen: dict[int, int] = {}
    for number, line in lines:
        fields = line.split("\t")
        try:
            if not line.strip():
                raise RowError(columns[0], "the line is empty")
            if len(fields) < len(columns):
                raise RowError(columns[len(fields)], f"missing (the row has {len(fields)} fields, "
                                                     f"while the header has {len(columns)} columns)")
            if len(fields) > len(columns):
                raise RowError(f"{len(columns) + 1}", f"an extra field {_quoted(fields[len(columns)])}; "
                                                      f"the header has {len(columns)} columns")
            row = row_type.from_fields(fields, columns)
        except RowError as e:
            raise UserError(f"{shown(path)} line {number} is a malformed row: column {e.column}: "
                            f"{e.problem}; {fix}") from None
        if row.idx in seen:
            raise UserError(f"{shown(path)} lines {seen[row.idx]} and {number} both have idx "
                            f"{row.idx}: column idx must be unique within a file; {fix}")
        seen[row.idx] = number
        rows.append(row)
    return rows


def read_rows(path: str | os.PathLike, fmt: TsvFormat) -> TsvContents:
    """Complete rows of a ``fmt`` file, by idx; a torn last line is not counted.

    UserError if the header is not exactly ``fmt``'s or a complete row breaks the format (see
    the module docstring): a file that is not of this format is never taken for one (nor
    truncated by a resume).
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
    rows = _parse_rows(path, enumerate(lines[1:], start=2), fmt.row, fmt.columns,
                       f"regenerate the file, or delete that line and rerun with {ref('resume', True)} "
                       "to redo its image")
    return TsvContents({row.idx: row for row in rows}, end)


def read_certify(path: str | os.PathLike) -> tuple[list[CertifyRow], tuple[str, ...]]:
    """Rows of any certify TSV, ours (fixed-n or sequential) or Cohen et al.'s, found by column
    name; blank lines and a torn last line are ignored. Returns ``(rows, columns)``.

    UserError, one line naming the file, the line and the column, if a row breaks the format
    (see the module docstring) or repeats an idx."""
    return read_any(path, certify_only=True)  # type: ignore[return-value]


def read_any(path: str | os.PathLike, *, certify_only: bool = False) -> tuple[list[Row], tuple[str, ...]]:
    """Rows of a certify TSV (:class:`CertifyRow`, when it has a ``radius`` column) or a predict
    TSV (:class:`PredictRow`), checked as :func:`read_certify` checks them; ``certify_only``:
    a file without ``radius`` is refused at its header."""
    path = Path(path)
    all_lines, _ = _complete_lines(path)
    lines = [(number, line) for number, line in enumerate(all_lines, start=1) if line.strip()]
    if not lines:
        raise UserError(f"{path} is empty; expected a certify TSV with header {CERTIFY.header!r}")
    columns = tuple(h.strip() for h in lines[0][1].split("\t"))
    required = ("idx", "label", "predict", *(("radius",) if certify_only else ()), "correct")
    missing = [c for c in required if c not in columns]
    if missing:
        kind = "a certify (not predict)" if certify_only else "a certify or predict"
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; is it {kind} TSV?")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise UserError(f"{shown(path)} line {lines[0][0]} (the header) names column "
                        f"{safe_text(repeated[0])!r} twice; regenerate the file")
    row_type = CertifyRow if "radius" in columns else PredictRow
    return _parse_rows(path, lines[1:], row_type, columns, "regenerate the file"), columns


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
