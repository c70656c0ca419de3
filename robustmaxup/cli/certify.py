"""``robustmaxup certify``: Cohen et al.'s CERTIFY over a dataset split, one TSV row per image.

Example::

    robustmaxup certify runs/c10/last.pt --dataset cifar10 --data-root data/cifar10 \\
        --skip 20 --n 100000 --alpha 0.001 --out certify_sigma0.25.tsv
    torchrun --nproc_per_node 4 -m robustmaxup -- certify ...   # sharded by image index

(The ``--`` stops torchrun from taking ``--n`` for an abbreviation of its own options.)

Output: ``idx label predict radius correct time`` (Cohen's TSV; ``predict`` = -1 abstains) and
the settings in ``FILE.tsv.json``. See :mod:`robustmaxup.cli._smoothing` for formats, resuming
and sharding.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from robustmaxup.cli._smoothing import CERTIFY, add_smoothing_args, run_smoothing
from robustmaxup.cli.common import make_parser, run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("certify", "Certify L2 robustness radii of the Gaussian-smoothed classifier "
                               "(Cohen et al. 2019, CERTIFY) and write one TSV row per image.")
    add_smoothing_args(p, with_n0=True)
    return p


def _body(args: argparse.Namespace) -> None:
    run_smoothing(args, CERTIFY)


def main(argv: Sequence[str] | None = None) -> int:
    return run("certify", _body, build_parser(), argv)
