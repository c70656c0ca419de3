"""``robustmaxup predict``: Cohen et al.'s PREDICT over a dataset split, one TSV row per image.

Example::

    robustmaxup predict runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --n 10000 --alpha 0.001 --out predict_sigma0.25.tsv

Output: ``idx label predict correct time`` (``predict`` = -1 abstains) and the settings in
``FILE.tsv.json``; the work is done by :func:`robustmaxup.certify.runner.run_job`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from robustmaxup.certify.runner import run_job
from robustmaxup.cli._smoothing import FLAGS, add_smoothing_args, cohen_positional_error, job_from_args
from robustmaxup.cli.common import make_parser, run
from robustmaxup.runtime.text import safe_text


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("predict", "Predict with the Gaussian-smoothed classifier (Cohen et al. 2019, "
                               "PREDICT; abstains unless a two-sided binomial test passes at --alpha).")
    add_smoothing_args(p, with_n0=False)
    return p


def _body(args: argparse.Namespace) -> None:
    run_job(job_from_args("predict", args))


def main(argv: Sequence[str] | None = None) -> int:
    cohen = cohen_positional_error("predict", sys.argv[2:] if argv is None else argv)
    if cohen:
        print(safe_text(cohen), file=sys.stderr)
        return 2
    return run("predict", _body, build_parser(), argv, FLAGS)
