"""``robustmaxup certify``: Cohen et al.'s CERTIFY over a dataset split, one TSV row per image.

Example::

    robustmaxup certify runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --skip 20 --n 100000 --alpha 0.001 --out certify_sigma0.25.tsv
    robustmaxup certify ... --sequential --radii 0.25 0.5 0.75 1.0 --n-max 100000
    torchrun --nproc_per_node 4 -m robustmaxup -- certify ...   # sharded by image index

(The ``--`` stops torchrun from taking ``--n`` for an abbreviation of its own options.)

Output: ``idx label predict radius correct time`` (Cohen's TSV; ``predict`` = -1 abstains; a
sequential run adds ``n_used``) and the settings in ``FILE.tsv.json``. The work is done by
:func:`robustmaxup.certify.runner.run_job`; see :mod:`robustmaxup.certify.runner` for
formats, resuming and sharding.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from robustmaxup.cli._smoothing import add_sequential_args, add_smoothing_args, run_smoothing
from robustmaxup.cli.args import make_parser


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("certify", "Certify L2 robustness radii of the Gaussian-smoothed classifier "
                               "(Cohen et al. 2019, CERTIFY) and write one TSV row per image.")
    add_smoothing_args(p, with_n0=True)
    add_sequential_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_smoothing("certify", build_parser(), argv)
