"""``robustmaxup analyze``: certified-accuracy table (and plot) from certify TSV files; accuracy,
abstentions and samples per image from predict TSV files (``robustmaxup analyze pred.tsv``).

Example::

    robustmaxup analyze gaussian.tsv maxup.tsv --radii 0 0.25 0.5 0.75 1 --format markdown \\
        --plot certified.png

One column per file (labelled by file name). A row is certified at radius r when it is correct,
not abstained and its radius is >= r (abstentions never count, r = 0 included); ACR is the mean
of radius * correct over all rows. The subset each file covers is printed, since ACR on a
500-image subset and on the full test set differ. Sequential files (with ``n_used``) are read
too, and their mean samples per image are reported. ``--quiet`` prints (and writes) only the
table, so ``--quiet --format csv --out F`` gives a pure CSV file.

Every input is read and checked before anything is written: a file with a row that breaks the
format (a radius that is not finite and >= 0, correct != int(predict == label), an abstention
with a radius or marked correct, a repeated idx, an unreadable time, ...) ends the command with
one line naming the file, the line and the column (exit 2), and no table, --out or --plot.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from robustmaxup.certify import analysis
from robustmaxup.cli.args import make_parser
from robustmaxup.cli.common import run
from robustmaxup.errors import UserError
from robustmaxup.runtime.io import (
    atomic_write_text, check_distinct, check_not_inputs, check_output_path, shown,
)
from robustmaxup.runtime.text import safe_text

log = logging.getLogger("robustmaxup")
DEFAULT_RADII = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("analyze", "Certified accuracy at given radii, ACR and abstain rate from "
                               "'robustmaxup certify' TSV files (optional plot); accuracy and abstain "
                               "rate from 'robustmaxup predict' TSV files.")
    p.add_argument("files", nargs="+", help="certify TSV files, or predict TSV files (one table column each)")
    p.add_argument("--radii", type=float, nargs="+", default=None,
                   help=f"L2 radii (pixels in [0,1]; default: {' '.join(f'{r:g}' for r in DEFAULT_RADII)}; "
                        "certify files only)")
    p.add_argument("--format", default="markdown", choices=analysis.TABLE_FORMATS.names(), help="table format")
    p.add_argument("--plot", default=None,
                   help="write certified accuracy vs radius to this image (.png, .pdf, .svg, ...; a "
                        "report: replaces an earlier report atomically, never any other file)")
    p.add_argument("--out", default=None,
                   help="also write the notes and table to this file (never one of the inputs; a "
                        "report: replaces an earlier report atomically, never any other file)")
    p.add_argument("--quiet", action="store_true", help="only the table")
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """``--out``/``--plot``: writable regular files, two files, neither an input TSV nor its
    sidecar nor an existing file of results, and a plot format matplotlib writes; checked before
    anything is read or written."""
    outputs = [(field, path) for field, path in (("out", args.out), ("plot", args.plot)) if path]
    for field, path in outputs:
        check_output_path(path, field)
    check_distinct(outputs)
    check_not_inputs(outputs, [(f"the input {kind}{shown(f)}", path) for f in args.files
                               for kind, path in (("", f), ("sidecar of ", analysis.sidecar_path(f)))])
    for field, path in outputs:
        analysis.check_report_target(path, field)
    if args.plot:
        analysis.plot_format(args.plot)


def _body(args: argparse.Namespace) -> None:
    radii = DEFAULT_RADII if args.radii is None else args.radii
    if any(not r >= 0 or r == float("inf") for r in radii):
        raise UserError("--radii must be finite and >= 0")
    _check_outputs(args)
    results = [analysis.read_results(f) for f in args.files]  # all read (and checked) first
    for res in results:
        if len(res) == 0:
            raise UserError(f"{shown(res.path)} has no rows yet")
    predict = isinstance(results[0], analysis.PredictResults)
    if predict and (args.plot or args.radii is not None):
        raise UserError(f"{'--plot' if args.plot else '--radii'} is for certify files; predict files "
                        "have no radii")
    table = analysis.format_table(results, radii, args.format)  # refuses certify + predict files
    for res in results:
        if (res.meta or {}).get("complete") is False:
            log.warning("warning: %s is incomplete (an interrupted run): its rows cover only part of "
                        "the selected images", shown(res.path))
    differ = analysis.differences(results)
    if differ:
        log.warning("warning: the files differ in %s; their columns are not a like-for-like "
                    "comparison", ", ".join(differ))
    notes = [f"# {name}: {res.subset_note()}" for res, name in zip(results, analysis.column_names(results))]
    legend = [] if predict else [f"# {analysis.THRESHOLD_NOTE}"]
    text = table if args.quiet else "\n".join([*notes, *legend, table])
    if args.plot:
        analysis.plot_certified_accuracy(results, args.plot)
        log.info("wrote %s", args.plot)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(safe_text(text, keep="\n\t"))


def main(argv: Sequence[str] | None = None) -> int:
    return run("analyze", _body, build_parser(), argv)
