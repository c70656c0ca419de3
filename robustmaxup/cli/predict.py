"""``robustmaxup predict``: Cohen et al.'s PREDICT over a dataset split, one TSV row per image.

Example::

    robustmaxup predict runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --n 10000 --alpha 0.001 --out predict_sigma0.25.tsv

Output: ``idx label predict correct time`` (``predict`` = -1 abstains) and the settings in
``FILE.tsv.json``; the work is done by :func:`robustmaxup.certify.runner.run_job`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from robustmaxup.cli._smoothing import add_smoothing_args, run_smoothing
from robustmaxup.cli.common import make_parser


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("predict", "Predict with the Gaussian-smoothed classifier (Cohen et al. 2019, "
                               "PREDICT; abstains unless a two-sided binomial test passes at --alpha).")
    add_smoothing_args(p, with_n0=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_smoothing("predict", build_parser(), argv)
