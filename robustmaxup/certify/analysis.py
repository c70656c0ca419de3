"""Certified accuracy, ACR, tables and plots from ``robustmaxup certify`` TSV files
(Cohen et al.'s format: ``idx label predict radius correct time``).

Conventions (stated in every table): a row is *certified at radius r* when it is correct, not an
abstention, and its radius is ``>= r``; abstentions count as not certified at every radius,
radius 0 included. The ACR is the mean of ``radius * correct`` over **all** rows (abstentions
contribute 0). Pure functions; nothing here imports training code.

Example::

    res = read_certify_tsv("certify_maxup-last_test_sigma0.25.tsv")
    certified_accuracy(res, [0.0, 0.5])      # array([0.81, 0.62])
    average_certified_radius(res)            # 0.531
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from robustmaxup.certify.smooth import ABSTAIN
from robustmaxup.certify.tsv import CertifyRow, read_any, read_certify, read_sidecar, sidecar_path
from robustmaxup.errors import UserError, ref
from robustmaxup.registry import Registry
from robustmaxup.runtime.checks import FieldError, check_positive
from robustmaxup.runtime.io import atomic_path, shown
from robustmaxup.runtime.text import safe_text

THRESHOLD_NOTE = ("certified at radius r = correct, not abstained, and radius >= r; abstentions "
                  "count as not certified at every radius (r = 0 included); "
                  "ACR = mean of radius * correct over all rows")


class _Subset:
    """What certify and predict results share: a length and the note on the images covered."""

    idx: np.ndarray
    meta: dict | None
    n_used: np.ndarray | None

    def __len__(self) -> int:
        return len(self.idx)

    def settings_note(self) -> str:
        """The sidecar's sampling settings, e.g. ``"sigma 0.25, n0 100, n 100000, alpha 0.001"``
        (sequential: ``n_max`` instead of ``n``); ``""`` without a sidecar."""
        meta = self.meta or {}
        seq = meta.get("sequential") if isinstance(meta.get("sequential"), Mapping) else None
        keys = [("sigma", meta), ("n0", meta), ("n_max", seq) if seq else ("n", meta), ("alpha", meta)]
        values = [(k, src[k]) for k, src in keys if isinstance(src.get(k), (int, float))
                  and not isinstance(src.get(k), bool)]
        return ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:g}" for k, v in values)

    def subset_note(self) -> str:
        """E.g. ``"500 of 10000 test images (skip 20); sigma 0.25, n0 100, n 100000, alpha 0.001"``
        or ``"full test split (10000 images)"``."""
        meta = self.meta or {}
        split, size = safe_text(meta.get("split")), meta.get("split_size")
        if meta.get("full_split") and len(self) == size:
            note = f"full {split} split ({len(self)} images)"
        else:
            limit = meta.get("max")
            limited = f", max {limit}" if isinstance(limit, int) and limit >= 0 else ""   # -1: all
            extra = f" (skip {meta['skip']}{limited})" if "skip" in meta else ""
            of = f" of {size} {split}" if size else ""
            note = f"{len(self)}{of} images{extra}"
        if self.n_used is not None and len(self):
            note += f"; sequential, mean {float(np.mean(self.n_used)):.0f} samples/image"
        settings = self.settings_note()
        if settings:
            note += f"; {settings}"
        if meta.get("complete") is False:
            selected = meta.get("num_selected")
            of = f" of the {selected} selected" if selected else ""
            note += f"; INCOMPLETE: {len(self)}{of} images (an interrupted run; {ref('resume', True)} continues it)"
        return note


@dataclass(frozen=True)
class CertifyResults(_Subset):
    """The columns of one certify TSV (one entry per row) plus its run metadata, if any.

    ``meta`` is the JSON sidecar ``FILE.tsv.json`` when it exists (subset, n, alpha, ...);
    ``n_used`` holds the estimation samples per image of a sequential run (None otherwise).
    """

    name: str
    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    meta: dict | None = None
    n_used: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[CertifyRow], name: str = "rows",
                  meta: dict | None = None) -> "CertifyResults":
        """The results of :func:`~robustmaxup.certify.runner.certify_dataset`'s rows, in memory
        (no TSV needed): ``certified_accuracy(CertifyResults.from_rows(rows), [0.25])``."""
        def col(field: str, dtype: type) -> np.ndarray:
            return np.array([getattr(r, field) for r in rows], dtype=dtype)

        sequential = bool(rows) and all(r.n_used is not None for r in rows)
        return cls(name, name, col("idx", np.int64), col("label", np.int64), col("predict", np.int64),
                   col("radius", np.float64), col("correct", np.int64), meta,
                   col("n_used", np.int64) if sequential else None)


@dataclass(frozen=True)
class PredictResults(_Subset):
    """The columns of one predict TSV, as :class:`CertifyResults` without the radius."""

    name: str
    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    meta: dict | None = None
    n_used: np.ndarray | None = None


_NUMBER = (int, float)
#: the sidecar keys read here and the types they must have (None is allowed for each)
SIDECAR_TYPES: dict[str, tuple[type, ...]] = {
    "split": (str,), "split_size": (int,), "full_split": (bool,), "skip": (int,), "max": (int,),
    "n": (int,), "sigma": _NUMBER, "alpha": _NUMBER, "sequential": (dict,),
}


def _read_sidecar(path: Path) -> dict | None:
    """The sidecar of ``path`` (None if there is none); UserError if it is unreadable or its
    keys have other types than :data:`SIDECAR_TYPES` (a foreign or edited file)."""
    meta = read_sidecar(path)
    if meta is None:
        return None
    sidecar = sidecar_path(path)
    for key, types in SIDECAR_TYPES.items():
        value = meta.get(key)
        bad = value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
                                     or (isinstance(value, float) and not math.isfinite(value)))
        if bad or (key == "sequential" and value is not None and not isinstance(value.get("n_max"), (int, type(None)))):
            raise UserError(f"the sidecar {shown(sidecar)} is malformed: {key} is "
                            f"{safe_text(repr(value))[:40]}; fix or remove it")
    return meta


def read_certify_tsv(path: str | os.PathLike) -> CertifyResults:
    """Read a certify TSV, fixed-n or sequential, ours or Cohen et al.'s (a torn last line is
    ignored). UserError, one line naming the file, the line and the column, if a row breaks the
    format (:func:`~robustmaxup.certify.tsv.read_certify`: a radius that is not finite and >= 0,
    correct != int(predict == label), an abstention with a radius or marked correct, a repeated
    idx, an unreadable time, ...), or if the sidecar is malformed: no number is computed from
    such a file."""
    path = Path(path)
    return _results(path, *read_certify(path))  # type: ignore[return-value]


def read_results(path: str | os.PathLike) -> CertifyResults | PredictResults:
    """A certify TSV (:func:`read_certify_tsv`) or a predict TSV (no ``radius`` column), checked
    the same way."""
    path = Path(path)
    return _results(path, *read_any(path))


def _results(path: Path, rows: Sequence, columns: Sequence[str]) -> CertifyResults | PredictResults:
    """The column arrays of rows read from ``path`` (certify rows when there is a radius)."""
    col = lambda name, dtype: np.array([getattr(r, name) for r in rows], dtype=dtype)  # noqa: E731
    n_used = col("n_used", np.int64) if "n_used" in columns else None
    head = (path.name, str(path), col("idx", np.int64), col("label", np.int64), col("predict", np.int64))
    if "radius" in columns:
        return CertifyResults(*head, col("radius", np.float64), col("correct", np.int64), _read_sidecar(path), n_used)
    return PredictResults(*head, col("correct", np.int64), _read_sidecar(path), n_used)


def predict_summary_rows(results: Sequence[PredictResults]) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of predict files: accuracy (abstentions count as wrong), abstain
    rate, accuracy among the images not abstained, image count and samples per image."""
    header = ["predict"] + column_names(results)
    decided = lambda r: r.predict != ABSTAIN  # noqa: E731
    body = [["accuracy"] + [f"{np.mean(r.correct):.3f}" for r in results],
            ["abstain"] + [f"{abstain_rate(r):.3f}" for r in results],
            ["accuracy when not abstained"] + [f"{np.mean(r.correct[decided(r)]):.3f}" if decided(r).any()
                                                 else "-" for r in results],
            ["images"] + [str(len(r)) for r in results],
            ["samples/image"] + [f"{mean_samples(r):.0f}" for r in results]]
    return header, body


def mean_samples(res: CertifyResults | PredictResults) -> float:
    """Mean estimation samples per image: ``n_used`` of a sequential run, else the sidecar's n."""
    if res.n_used is not None and len(res):
        return float(np.mean(res.n_used))
    n = (res.meta or {}).get("n")
    return float(n) if isinstance(n, (int, float)) else float("nan")


def _setting(res: CertifyResults, key: str):
    meta = res.meta or {}
    if key == "n" and meta.get("sequential"):
        return f"n_max {meta['sequential'].get('n_max')}"
    return meta.get(key)


def differences(results: Sequence[CertifyResults]) -> list[str]:
    """What makes the files' columns incomparable: different images, or (from their sidecars)
    a different sigma, n or alpha; e.g. ``["images", "sigma (a.tsv 0.25, b.tsv 0.5)"]``."""
    if len(results) < 2:
        return []
    out = []
    if len({tuple(np.sort(r.idx)) for r in results}) > 1:
        out.append("images")
    names = column_names(results)
    for key in ("sigma", "n", "alpha"):
        values = [_setting(r, key) for r in results]
        known = [v for v in values if v is not None]
        if len({str(v) for v in known}) > 1:
            shown = ", ".join(f"{name} {v}" for name, v in zip(names, values) if v is not None)
            out.append(f"{key} ({shown})")
    return out


def _certified(res: CertifyResults) -> np.ndarray:
    return (res.correct == 1) & (res.predict != ABSTAIN)


def certified_accuracy(res: CertifyResults, radii: Sequence[float]) -> np.ndarray:
    """Approximate certified accuracy at each radius: fraction of **all** rows that are correct,
    not abstained, and have radius ``>= r``. Shape ``[len(radii)]``."""
    if not isinstance(radii, Sequence) and not isinstance(radii, np.ndarray):
        raise FieldError("radii", f"must be a list of radii, e.g. [{radii!r}]")
    for r in radii:
        check_positive("radii", r, allow_zero=True)
    if len(res) == 0:
        return np.full(len(radii), np.nan)
    ok = _certified(res)
    return np.array([float(np.mean(ok & (res.radius >= r))) for r in radii])


def average_certified_radius(res: CertifyResults) -> float:
    """ACR: mean over **all** rows of ``radius * correct`` (abstentions and errors count 0)."""
    if len(res) == 0:
        return float("nan")
    return float(np.mean(np.where(_certified(res), res.radius, 0.0)))


def abstain_rate(res: CertifyResults | PredictResults) -> float:
    """Fraction of rows that abstained."""
    return float(np.mean(res.predict == ABSTAIN)) if len(res) else float("nan")


def column_names(results: Sequence[CertifyResults]) -> list[str]:
    """File names as column labels (the full path where two files share a name), control
    characters escaped."""
    names = [r.name for r in results]
    return [safe_text(r.path if names.count(r.name) > 1 else r.name) for r in results]


def summary_rows(results: Sequence[CertifyResults], radii: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Header and body rows: one row per radius, then ACR, abstain rate and image count."""
    header = ["radius (>= r)"] + column_names(results)
    accs = [certified_accuracy(r, radii) for r in results]
    body = [[f"{rad:g}"] + [f"{a[i]:.3f}" for a in accs] for i, rad in enumerate(radii)]
    body.append(["ACR"] + [f"{average_certified_radius(r):.3f}" for r in results])
    body.append(["abstain"] + [f"{abstain_rate(r):.3f}" for r in results])
    body.append(["images"] + [str(len(r)) for r in results])
    if any(r.n_used is not None for r in results):
        body.append(["samples/image"] + [f"{mean_samples(r):.0f}" for r in results])
    return header, body


TableFormatter = Callable[[list[str], list[list[str]]], str]
TABLE_FORMATS: Registry[TableFormatter] = Registry("table format")


def _markdown_escape(text: str) -> str:
    """A Markdown table cell: pipes (which would split the cell) and backslashes escaped."""
    return re.sub(r"([\\|])", r"\\\1", text)


@TABLE_FORMATS.register("markdown")
def _markdown(header: list[str], body: list[list[str]]) -> str:
    cell = lambda rows: [_markdown_escape(c) for c in rows]  # noqa: E731
    lines = ["| " + " | ".join(cell(header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row)) + " |" for row in body]
    return "\n".join(lines)


@TABLE_FORMATS.register("csv")
def _csv(header: list[str], body: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue().rstrip("\n")


_LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """Every LaTeX special character escaped, in one pass (so escapes are not re-escaped)."""
    return re.sub(r"[\\_%&#${}~^]", lambda m: _LATEX[m.group()], text)


@TABLE_FORMATS.register("latex")
def _latex(header: list[str], body: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h).replace(">=", "$\\geq$") for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def format_table(results: Sequence[CertifyResults] | Sequence[PredictResults], radii: Sequence[float],
                 fmt: str = "markdown") -> str:
    """The summary table in ``fmt`` (``markdown``, ``latex`` or ``csv``): certified accuracy
    per radius for certify files, accuracy and abstentions for predict files (``radii`` unused)."""
    predict = [isinstance(r, PredictResults) for r in results]
    if any(predict) and not all(predict):
        name = column_names(results)[predict.index(not predict[0])]
        raise UserError(f"analyze takes certify files or predict files, not both: {name} is a "
                        f"{'predict' if not predict[0] else 'certify'} file")
    header, body = predict_summary_rows(results) if all(predict) else summary_rows(results, radii)
    return TABLE_FORMATS.get(fmt)(header, body)


#: what every plot ``analyze`` writes carries in its metadata, so a later run knows it may replace it
REPORT_TAG = "robustmaxup analyze"
#: how each plot format carries :data:`REPORT_TAG` (matplotlib's ``metadata``, or Pillow's keywords)
_PLOT_TAGGING: dict[str, dict[str, Any]] = {
    "png": {"metadata": {"Software": REPORT_TAG}},
    **{f: {"metadata": {"Creator": REPORT_TAG}} for f in ("pdf", "svg", "svgz", "eps", "ps")},
    **{f: {"pil_kwargs": {"comment": REPORT_TAG.encode()}} for f in ("jpg", "jpeg")},
    **{f: {"pil_kwargs": {"description": REPORT_TAG}} for f in ("tif", "tiff")},
    "webp": {"pil_kwargs": {"xmp": REPORT_TAG.encode()}},
}
#: the first table line of each report ``format_table`` writes (after any ``# `` note lines)
_TABLE_STARTS = ("| radius (>= r) |", "| predict |", "radius (>= r),", "predict,", "\\begin{tabular}")


def _is_report(path: Path) -> bool:
    """Whether ``path`` holds a report ``analyze`` wrote: a table (its first line after the
    ``# `` notes is one of :data:`_TABLE_STARTS`) or a plot tagged with :data:`REPORT_TAG`."""
    try:
        if path.stat().st_size > 64 << 20:
            return False
        data = path.read_bytes()
        if data.startswith(b"\x1f\x8b"):  # svgz
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return False
    if not data.strip() or REPORT_TAG.encode() in data:  # an empty file holds nothing to lose
        return True
    lines = data.decode("utf-8", errors="replace").splitlines()
    first = next((line for line in lines if not line.startswith("# ")), "")
    return first.startswith(_TABLE_STARTS)


def check_report_target(path: str | os.PathLike, field: str) -> None:
    """FieldError if ``path`` exists and is not a report ``analyze`` wrote: a report (``--out``,
    ``--plot``) replaces an earlier report atomically, never another file (results, a run's
    records, notes, a figure made elsewhere) that a mistyped path points at."""
    path = Path(path)
    if not path.is_file() or _is_report(path):
        return
    raise FieldError(field, f"{shown(path)} exists and is not a report of analyze (it replaces only "
                            "its own tables and plots); choose another path or remove that file")


#: image formats written without outside tools (pgf would need LaTeX)
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def plot_format(path: str | os.PathLike) -> str:
    """The image format ``path``'s extension names; FieldError (field ``plot``) if matplotlib
    cannot write it (checked before anything is written)."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = [f for f in PLOT_FORMATS if f in FigureCanvasBase.get_supported_filetypes()]
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in supported:
        what = f"extension .{safe_text(suffix)}" if suffix else "no extension"
        raise FieldError("plot", f"{shown(path)} has {what}; name an image file ending in one of "
                                 f"{', '.join('.' + s for s in supported)}")
    return suffix


def plot_certified_accuracy(results: Sequence[CertifyResults], path: str | os.PathLike,
                            max_radius: float | None = None) -> None:
    """Certified accuracy vs radius, one line per file, written atomically (Agg backend); the
    format is the extension's (:func:`plot_format`)."""
    fmt = plot_format(path)
    if max_radius is not None:
        check_positive("max_radius", max_radius)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    top = max_radius if max_radius is not None else max([float(r.radius.max()) for r in results if len(r)] + [0.5]) * 1.05
    grid = np.linspace(0.0, top, 400)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, res in zip(column_names(results), results):
        label = label.replace("$", r"\$")  # a file name is text, never mathtext
        ax.plot(grid, certified_accuracy(res, grid), label=f"{label} (ACR {average_certified_radius(res):.3f})")
    ax.set_xlabel("L2 radius r (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy (radius >= r)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, **_PLOT_TAGGING.get(fmt, {}))
    finally:
        plt.close(fig)
