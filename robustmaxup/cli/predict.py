"""``robustmaxup predict``: Cohen et al.'s PREDICT over a dataset split, one TSV row per image.

Example::

    robustmaxup predict runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --n 10000 --alpha 0.001 --out predict_sigma0.25.tsv

``--sequential --n-max N`` stops each image once its class is decided (anytime-valid; at most N
samples), which takes far fewer samples on clear images::

    robustmaxup predict runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --sequential --n-max 100000 --out predict_seq.tsv

Output: ``idx label predict correct time`` (``predict`` = -1 abstains; sequential runs add
``n_used``, the samples drawn) and the settings in ``FILE.tsv.json``; the work is done by
:func:`robustmaxup.certify.runner.run_job`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from robustmaxup.cli._smoothing import add_sequential_args, add_smoothing_args, run_smoothing
from robustmaxup.cli.args import make_parser


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("predict", "Predict with the Gaussian-smoothed classifier (Cohen et al. 2019, "
                               "PREDICT; abstains unless a two-sided binomial test passes at --alpha).")
    add_smoothing_args(p, with_n0=False)
    add_sequential_args(p, certify=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_smoothing("predict", build_parser(), argv)
